"""Generation engines other than transformers' `generate`: each turns benchmark problems into
completions for `qlcode.execution.evaluate.execute`, prompted and finished as qlcode.execution.generate
does, so that pass@k from one engine compares with another's."""
