"""Common random numbers: a seed fixes one prompt stream, and every method takes its prompts from
it in order, P per iteration (and rank)."""

from flowrl.training.build import STREAM_BLOCK, PromptBatches, prompt_stream

PROMPTS = [f"prompt {i}" for i in range(50)]


def test_methods_with_different_batch_sizes_see_the_same_sequence():
    # P 2 for 3 iterations and P 3 for 2 iterations consume the same first 6 prompts, in order
    two = [p for i in range(3) for p in PromptBatches(PROMPTS, 2, 3, seed=5, rank=0, world=1)[i]]
    three = [p for i in range(2) for p in PromptBatches(PROMPTS, 3, 2, seed=5, rank=0, world=1)[i]]
    assert two == three == prompt_stream(PROMPTS, 5, 0, 6)
    assert prompt_stream(PROMPTS, 6, 0, 6) != two  # another seed, another stream


def test_ranks_interleave_and_a_resumed_run_continues_in_place():
    # iteration i on rank r of W takes the P prompts at (i * W + r) * P
    stream = prompt_stream(PROMPTS, 1, 0, 16)
    for rank in (0, 1):
        batches = PromptBatches(PROMPTS, 2, 4, seed=1, rank=rank, world=2)
        assert [batches[i] for i in range(4)] == [stream[(i * 2 + rank) * 2 : (i * 2 + rank) * 2 + 2] for i in range(4)]
    resumed = PromptBatches(PROMPTS, 2, 4, seed=1, start=2, rank=0, world=1)
    assert len(resumed) == 2 and resumed[0] == prompt_stream(PROMPTS, 1, 4, 2)


def test_the_stream_crosses_its_seeded_blocks_seamlessly():
    k = STREAM_BLOCK - 1
    assert prompt_stream(PROMPTS, 3, k, 3) == prompt_stream(PROMPTS, 3, 0, k + 3)[k:]
