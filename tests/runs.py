"""Run sizes the whole-run tests share: two iterations of two prompts, G 3, T 4, an evaluation after
each iteration at one sample of 18 held-out prompts (seconds per run on the tiny model)."""

SMALL = [
    "train.iterations=2",
    "train.prompts_per_step=2",
    "method.group_size=3",
    "method.num_steps=4",
    "val.samples_per_prompt=1",
    "val.max_prompts=18",
    "val.num_steps=4",
    "trainer.val_check_interval=1",
]
