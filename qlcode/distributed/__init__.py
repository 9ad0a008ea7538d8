"""Several processes, GPUs and machines on the stack's own engines: torch's launcher (torchrun) starts
the processes; the Trainer (through accelerate) runs DDP, FSDP2 or DeepSpeed ZeRO as the recipe's
`distributed:` section says. Nothing here reimplements what those engines do."""
