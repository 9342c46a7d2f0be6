"""Evaluation the way the papers do it (`python -m flowrl.evaluate protocol=<name>`, and
`eval_protocol=<name>` at the end of a training run).

- `protocol`: a protocol's prompts (a file under $FLOWRL_DATA, or an embedded world's held-out
  set) and its sampler settings; the checks that run before any model loads.
- `weights`: what `checkpoint=` names (a run directory, a final_model directory, a checkpoint,
  a LoRA file, or none for the base model), loaded onto the configured model.
- `scoring`: sampling the protocol with fixed noise, every reward per image, the table of means
  with their 95% intervals (per category too), and the paired difference of two checkpoints.
"""
