import pytest
import torch

from foundation.data import TrainSampler, eval_indices
from foundation.recipes import RecipeError, load_recipe, recipe_names


def test_named_recipes_resolve_and_overrides_apply():
    assert "grid-mae" in recipe_names()
    r = load_recipe("grid-mae", ["train.steps=7", "model.width=64", "data.labels=pattern:^(\\d)_", "adapter.patch=[2, 2]", "train.lr=2e-3", "train.precision=no"])
    assert r["train"]["precision"] == "no"
    assert r["train"]["lr"] == 0.002
    assert r["train"]["steps"] == 7 and r["model"]["width"] == 64 and r["adapter"]["patch"] == [2, 2]
    assert r["data"]["labels"] == "pattern:^(\\d)_"


@pytest.mark.parametrize("override,message", [
    (["train.stepz=3"], "unknown recipe key 'train.stepz'. Did you mean steps"),
    (["train.steps=many"], "train.steps expects a whole number"),
    (["train.steps=0"], "train.steps must be a positive number"),
    (["train.precision=fp8"], "train.precision='fp8' is not one of"),
    (["masking.ratio=1.5"], "masking.ratio must be in"),
    (["model.heads=5"], "divisible by model.heads"),
    (["adapter.colour=1"], "adapter.colour. Known: channels"),
    (["adapter.patch=4"], "adapter.patch expects a list such as [4, 4], got '4'"),  # typed by the adapter's default
    (["adapter.flip=maybe"], "adapter.flip expects true or false, got 'maybe'"),
    (["train.steps"], "is not key=value"),
    (["modality=lidar"], "modality 'lidar' is not one of"),
])
def test_bad_keys_and_values_give_clear_errors(override, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_recipe("grid-mae", override)


def test_unknown_recipe_name_suggests_close_ones():
    with pytest.raises(RecipeError, match="grid-mae"):
        load_recipe("grid-mea")


@pytest.mark.parametrize("n,world,batch", [(103, 2, 8), (64, 2, 8), (17, 1, 4), (50, 3, 4)])
def test_train_sharding_drops_less_than_one_global_batch_and_no_duplicates(n, world, batch):
    seen = []
    for rank in range(world):
        s = TrainSampler(n, batch, world, rank, seed=1)
        items = [i for i, _ in s]
        assert len(items) == s.batches_per_epoch * batch
        seen += items
    assert len(seen) == len(set(seen))
    assert n - len(seen) <= world * batch - 1
    assert TrainSampler(n, batch, world, 0, seed=1).dropped_per_epoch == n - len(seen)


def test_resuming_a_sampler_mid_epoch_continues_the_same_order():
    full = list(TrainSampler(100, 4, 1, 0, seed=3))
    s = TrainSampler(100, 4, 1, 0, seed=3)
    s.set_position(0, 5)
    assert list(s) == full[20:]


def test_eval_sees_every_sample_once_in_order():
    for n, world in [(10, 3), (7, 2), (1, 2), (9, 1)]:
        joined = [i for r in range(world) for i in eval_indices(n, world, r)]
        assert joined == list(range(n))


class _Numbers(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(23))


def test_iterable_datasets_are_sharded_over_ranks_and_workers_exactly_once():
    from foundation.data import ShardedIterable

    seen = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(ShardedIterable(_Numbers(), world=2, rank=rank), batch_size=None, num_workers=2)
        seen += list(loader)
    assert sorted(int(x) for x in seen) == list(range(23))


def test_length_bucketing_cuts_padding_keeps_the_sample_set_and_resumes_exactly():
    lengths = torch.randint(1, 200, (400,), generator=torch.Generator().manual_seed(0)).tolist()

    def padding(sampler):
        idx = [i for i, _ in sampler]
        batches = torch.tensor([lengths[i] for i in idx]).view(-1, 8)
        return int((batches.max(1).values.unsqueeze(1) - batches).sum()), sorted(idx)

    plain_pad, plain_set = padding(TrainSampler(400, 8, 1, 0, seed=1))
    bucket_pad, bucket_set = padding(TrainSampler(400, 8, 1, 0, seed=1, lengths=lengths))
    assert bucket_set == plain_set and bucket_pad < plain_pad / 4
    full = list(TrainSampler(400, 8, 1, 0, seed=1, lengths=lengths))
    s = TrainSampler(400, 8, 1, 0, seed=1, lengths=lengths)
    s.set_position(0, 7)
    assert list(s) == full[56:]
    ranks = [[i for i, _ in TrainSampler(400, 8, 2, r, seed=1, lengths=lengths)] for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == 200


def test_masking_comes_from_the_modality_adapter_unless_the_recipe_sets_it():
    """``Adapter.default_masking`` is the one value per modality: a recipe without masking gets it."""
    from modalities.base import adapter_class

    for name in ("speech-mae", "medical-mae", "graph-mae", "pointcloud-mae", "earth-mae", "grid-mae"):
        r = load_recipe(name)
        default = adapter_class(r["modality"]).default_masking
        assert {k: r["masking"][k] for k in default} == default, name
    assert load_recipe("speech-mae")["masking"]["kind"] == "span"  # not the core's "random"
    assert load_recipe("medical-contrast")["masking"]["ratio"] == 0.6  # a recipe that sets it keeps its value
    assert load_recipe("speech-mae", ["masking.ratio=0.5"])["masking"]["ratio"] == 0.5


@pytest.mark.parametrize("name,override,message", [
    ("earth-jepa", ["masking.ratio=0.5"], "objective 'jepa' does not use masking.ratio"),
    ("grid-jepa", ["mae.decoder_width=32"], "does not use mae.decoder_width"),
    ("grid-mae", ["jepa.targets=2"], "does not use jepa.targets"),
    ("medical-mae", ["contrast.temperature=0.2"], "does not use contrast.temperature"),
])
def test_a_section_the_objective_does_not_read_is_refused(name, override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(name, override)


def test_every_shipped_recipe_sets_only_sections_its_objective_reads():
    for name in recipe_names():
        load_recipe(name)  # raises RecipeError on a section that would do nothing


def test_alignment_sections_are_refused_outside_alignment():
    with pytest.raises(RecipeError, match="does not use align.dim"):
        load_recipe("grid-mae", ["align.dim=32"])
    with pytest.raises(RecipeError, match="objective 'align' does not use masking.ratio"):
        load_recipe("align-speech-text", ["masking.ratio=0.5"])
