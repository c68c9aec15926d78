"""SASRec: causal (a later item never changes an earlier state), every position trained on its next item, and it
learns a sequence it can only learn from order."""

from __future__ import annotations

import pytest
import torch

from mirec.config import EvalConfig, RunConfig, SASRecConfig, TrainConfig
from mirec.config.checked import ConfigError
from mirec.data.batching import Batch
from mirec.models.sasrec import SASRec
from mirec.training.trainer import train_run
from tests.training.test_trainer import data_dir  # noqa: F401 - the learnable cycle dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def batch_of(rows: list[list[int]], length: int, targets: list[int] | None = None) -> Batch:
    items = torch.zeros(len(rows), length, dtype=torch.long)
    for r, row in enumerate(rows):
        items[r, : len(row)] = torch.tensor(row)
    mask = (items > 0).float()
    return Batch(items, mask, mask.long(), None if targets is None else torch.tensor(targets))


def model(**options) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(embedding_dim=16, maxlen=6, num_blocks=2, num_heads=2, **options), n_items=30).eval()


def test_a_later_item_never_changes_an_earlier_state():
    sasrec = model()
    changed = batch_of([[3, 7, 9, 11, 2]], 6)
    changed.items[0, 3:5] = torch.tensor([21, 22])  # same length, so every position embedding is the same
    with torch.no_grad():
        a = sasrec.sequence_states(batch_of([[3, 7, 9, 11, 2]], 6))
        b = sasrec.sequence_states(changed)
    torch.testing.assert_close(a[0, :3], b[0, :3], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[0, 4], b[0, 4])  # the changed items do change their own states
    assert (a[0, 5] == 0).all()  # padding rows are zero


def test_the_user_vector_is_the_state_after_the_latest_item():
    sasrec = model()
    batch = batch_of([[3, 7, 9], [4, 5, 6, 8, 10]], 6)
    with torch.no_grad():
        states, users = sasrec.sequence_states(batch), sasrec(batch)
    assert users.shape == (2, 1, 16)
    torch.testing.assert_close(users[:, 0], torch.stack([states[0, 2], states[1, 4]]))


def test_every_position_is_trained_on_the_item_after_it():
    sasrec = model()
    output = sasrec.training_output(batch_of([[3, 7, 9], [4, 5]], 6, targets=[12, 13]))
    assert output.targets.tolist() == [7, 9, 12, 5, 13]
    assert output.user_vectors.shape == (5, 16)
    single = model(all_positions=False).training_output(batch_of([[3, 7, 9], [4, 5]], 6, targets=[12, 13]))
    assert single.targets is None and single.user_vectors.shape == (2, 16)


def test_sasrec_has_one_interest_and_a_head_count_that_divides_d():
    with pytest.raises(ConfigError, match="num_interests"):
        SASRecConfig(num_interests=4)
    with pytest.raises(ConfigError, match="num_heads"):
        SASRecConfig(embedding_dim=16, num_heads=3)


# BCE learns it more slowly; row negatives: RecTools' per-position uniform draws; gSASRec's separate output table
@pytest.mark.parametrize(
    ("loss", "steps", "row_negatives", "output_table", "item_dropout"),
    [("sampled", 300, 0, "shared", 0.0), ("gbce", 900, 0, "shared", 0.0), ("sampled", 300, 32, "shared", 0.2),
     ("sampled", 300, 0, "separate", 0.0)],
)  # fmt: skip
def test_sasrec_learns_the_item_cycle(data_dir, tmp_path, loss, steps, row_negatives, output_table, item_dropout):  # noqa: F811
    options = {"output_table": output_table, "item_dropout": item_dropout}
    config = RunConfig(
        model=SASRecConfig(embedding_dim=32, maxlen=8, num_blocks=1, dropout=0.1, **options),
        train=TrainConfig(
            batch_size=32,
            lr=0.005,
            max_steps=steps,
            eval_every=100,
            patience=10,
            seed=3,
            device="cpu",
            num_negatives_factor=2,
            window="last",
            loss=loss,
            row_negatives=row_negatives,
        ),
        eval=EvalConfig(topk=[5], early_stop_metric="recall@5", batch_size=64),
    )
    metrics = train_run(data_dir, config, tmp_path / "sasrec", progress=False)
    # the next item is the last one + 1: only order tells it, and a causal model reads order
    if output_table == "shared":
        assert metrics["test"]["recall@5"] > 0.5
    else:  # its own output rows learn the next item, not the shared table's chain to the later targets (~0.35)
        assert metrics["test"]["hit_rate@5"] > 0.9


@pytest.mark.parametrize("item_dropout", [0.0, 0.2])
def test_sasrec_takes_the_global_context_like_every_model(data_dir, tmp_path, item_dropout):  # noqa: F811
    config = RunConfig(
        model=SASRecConfig(embedding_dim=16, maxlen=8, num_blocks=1, global_context=True, item_dropout=item_dropout),
        train=TrainConfig(batch_size=16, max_steps=20, eval_every=20, seed=3, device="cpu", num_negatives_factor=2),
        eval=EvalConfig(topk=[5], early_stop_metric="recall@5", batch_size=64),
    )
    train_run(data_dir, config, tmp_path / "sasrec-gc", progress=False)
    assert (tmp_path / "sasrec-gc" / "graph.safetensors").exists()


def test_the_xavier_init_is_sasrec_pytorchs_xavier_normal():
    torch.manual_seed(0)
    xavier = SASRec(SASRecConfig(embedding_dim=32, maxlen=50, num_blocks=1, init="xavier"), n_items=4000)
    torch.manual_seed(0)
    mixed = SASRec(SASRecConfig(embedding_dim=32, maxlen=50, num_blocks=1, init="mixed"), n_items=4000)
    # xavier_normal_: std sqrt(2 / (fan_in + fan_out)); an [n, d] table has fan_in d and fan_out n
    positions = xavier.position_embedding.weight
    assert float(positions.std()) == pytest.approx((2 / (50 + 32)) ** 0.5, rel=0.1)
    items = xavier.item_embedding.weight[1:]
    assert float(items.std()) == pytest.approx((2 / (4001 + 32)) ** 0.5, rel=0.1)
    assert float(xavier.item_embedding.weight[0].abs().sum()) == 0.0
    assert float(mixed.position_embedding.weight.std()) == pytest.approx(1.0, rel=0.1)  # torch's N(0, 1)


def test_the_torch_init_and_unscaled_items_are_rectools_sasrec():
    torch.manual_seed(0)
    rectools = SASRec(SASRecConfig(embedding_dim=32, maxlen=50, init="torch", scale_items=False), n_items=4000)
    items = rectools.item_embedding.weight[1:]
    assert float(items.std()) == pytest.approx(1.0, rel=0.05)  # nn.Embedding's N(0, 1)
    assert float(rectools.item_embedding.weight[0].abs().sum()) == 0.0
    # without the sqrt(d) scale the first block reads items + positions; with it, 4 x the items (d = 16)
    batch = batch_of([[3, 7, 9]], 6)
    unscaled, scaled = model(scale_items=False), model(scale_items=True)
    with torch.no_grad():
        unscaled.position_embedding.weight.zero_()
        scaled.position_embedding.weight.zero_()
        scaled.item_embedding.weight.mul_(0.25)  # the scale undone by hand: both models then read the same input
        torch.testing.assert_close(unscaled.sequence_states(batch), scaled.sequence_states(batch), rtol=1e-5, atol=1e-5)
        scaled.item_embedding.weight.mul_(4.0)
        assert not torch.allclose(unscaled.sequence_states(batch), scaled.sequence_states(batch), atol=1e-3)


def test_a_separate_output_table_scores_the_states_and_trains_apart():
    shared, separate = model(), model(output_table="separate")
    assert shared.output_item_embedding is None
    torch.testing.assert_close(shared.output_embeddings(), shared.item_embedding.weight, rtol=0, atol=0)
    table = separate.output_item_embedding.weight
    assert separate.output_embeddings().shape == (31, 16) and not torch.allclose(table, separate.item_embedding.weight)
    torch.testing.assert_close(separate.output_embeddings(torch.tensor([4, 9])), table[[4, 9]], rtol=0, atol=0)
    assert float(table[0].abs().sum()) == 0.0  # the padding row, as the input table's
    # a scored item's gradient lands in the output table only; the input table gets the history's rows only
    separate.train()
    states = separate.training_output(batch_of([[3, 7, 9]], 6, targets=[12])).user_vectors
    (states @ separate.output_embeddings(torch.tensor([12, 20])).T).sum().backward()
    touched_out = separate.output_item_embedding.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    touched_in = separate.item_embedding.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched_out == [12, 20] and touched_in == [3, 7, 9]
    assert [p.shape[0] for p in separate.keep_item_grad_buffer()] == [31, 31]  # both kept on the CPU fast path
    with pytest.raises(ConfigError, match="output_table"):
        SASRecConfig(output_table="separate", item_features=["brand"])


def test_item_dropout_masks_an_item_alike_as_input_and_output_for_one_step():
    sasrec = model(item_dropout=0.5).train()
    ids = torch.arange(1, 31)
    raw = sasrec.item_embedding.weight[1:].detach().clone()
    sasrec.training_output(batch_of([[3, 7, 9]], 6, targets=[12]))
    with torch.no_grad():
        inputs, outputs = sasrec.embed_items(ids), sasrec.output_embeddings(ids)
    torch.testing.assert_close(inputs, outputs, rtol=0, atol=0)  # one mask per item for the step
    dropped = inputs == 0
    assert 0.4 < float(dropped.float().mean()) < 0.6  # 480 elements, p = 0.5
    torch.testing.assert_close(inputs[~dropped], raw[~dropped] * 2, rtol=1e-6, atol=1e-7)  # kept ones scaled 1/(1-p)
    sasrec.global_context = ThreeTimesTheRows()  # the global context reads the same dropped table
    torch.testing.assert_close(sasrec.embed_items(ids).detach(), inputs * 3, rtol=0, atol=0)
    sasrec.global_context = None
    sasrec.on_step_end(1)
    torch.testing.assert_close(sasrec.embed_items(ids).detach(), raw, rtol=0, atol=0)  # the next step draws anew
    sasrec.training_output(batch_of([[3, 7, 9]], 6, targets=[12]))
    torch.testing.assert_close(sasrec.eval().embed_items(ids).detach(), raw, rtol=0, atol=0)  # never at evaluation
    with pytest.raises(ConfigError, match="item_dropout"):
        SASRecConfig(item_dropout=1.0)
    with pytest.raises(ConfigError, match="item_dropout"):
        SASRecConfig(item_dropout=0.2, item_features=["brand"])


class ThreeTimesTheRows(torch.nn.Module):
    def rows(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return 3 * table[ids]
