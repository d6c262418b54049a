"""``logits_of`` on the outputs of other model families, and capture leaving out unreadable examples."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from probes import UnreadableExample, capture, logits_of
from probes._capture_data import skipping_batches

# ----------------------------------------------------------------------------- logits_of

LOGITS = torch.arange(6.0).reshape(2, 3)


class ModelOutput(OrderedDict):
    """The shape of a Hugging Face ``ModelOutput``: a dict whose entries are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Output:
    hidden: torch.Tensor
    logits: torch.Tensor


Pair = namedtuple("Pair", ["features", "logits"])


@pytest.mark.parametrize(
    "output",
    [
        LOGITS,
        {"loss": torch.tensor(0.5), "logits": LOGITS},
        ModelOutput(loss=torch.tensor(0.5), logits=LOGITS, hidden_states=(torch.zeros(2, 4),)),
        Output(hidden=torch.zeros(2, 7), logits=LOGITS),
        Pair(features=torch.zeros(2, 7), logits=LOGITS),
        (LOGITS, torch.zeros(2, 9, 4)),
        [[LOGITS], torch.zeros(2)],
        {"scores": LOGITS, "boxes": torch.zeros(2, 9, 4)},
    ],
    ids=["tensor", "dict", "model-output", "object", "namedtuple", "tuple", "nested", "dict-first"],
)
def test_logits_of_finds_the_logits(output):
    assert logits_of(output) is LOGITS


@pytest.mark.parametrize(
    ("output", "said"),
    [
        ("oops", "returned a str;"),
        (None, "returned None;"),
        ({"label": "cat", "score": 0.5}, "returned a dict with keys [label, score] and no tensor;"),
        ((1, 2), "returned a tuple of 2 item(s), none of them a tensor;"),
        ({"logits": None, "loss": torch.tensor(1.0)}, "whose 'logits' is a NoneType, not a tensor"),
    ],
    ids=["string", "none", "dict-no-tensor", "tuple-no-tensor", "logits-none"],
)
def test_logits_of_says_what_the_forward_returned(output, said):
    with pytest.raises(TypeError) as exc:
        logits_of(output)
    message = str(exc.value)
    assert message.startswith("the model's forward returned") and said in message, message
    assert "expected the logits as a tensor" in message and "\n" not in message


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.body(x)
        return {"hidden": h, "logits": self.head(h)}


def test_capture_keeps_the_logits_entry_as_output():
    torch.manual_seed(0)
    net = DictNet()
    x = torch.randn(10, 4)
    feats = capture(net, x, ["body"], keep_output=True, progress=False)
    expected = net(x)["logits"].detach().numpy()
    np.testing.assert_allclose(feats.output, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- skipping


class Unreadable(UnreadableExample):
    pass


class WithBadItems(Dataset):
    """Item i is (a constant 4-vector i, label i % 2); the items in ``bad`` cannot be read."""

    def __init__(self, n: int, bad: set[int]):
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise Unreadable(f"item {i} is broken")
        return torch.full((4,), float(i)), i % 2


def _tiny_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3))


def test_capture_fails_on_an_unreadable_example_by_default():
    with pytest.raises(Unreadable, match="item 3 is broken"):
        capture(_tiny_linear(), WithBadItems(10, {3}), ["0"], batch_size=4, progress=False)


def test_capture_can_leave_unreadable_examples_out():
    data = WithBadItems(10, {3, 8, 9})
    with pytest.warns(RuntimeWarning, match="skipped 3 of 10 examples that could not be read"):
        feats = capture(
            _tiny_linear(), data, ["0"], batch_size=4, progress=False, skip_unreadable=True
        )
    assert feats.skipped == [3, 8, 9]  # the whole last batch (8, 9) was unreadable
    assert feats.n == 7
    kept = [0, 1, 2, 4, 5, 6, 7]
    assert feats.labels.tolist() == [i % 2 for i in kept]
    x = torch.stack([data[i][0] for i in kept])
    np.testing.assert_allclose(feats["0"], _tiny_linear()(x).detach().numpy(), rtol=1e-5)
    (note,) = feats.warnings
    assert note.startswith("capture: skipped 3 of 10 examples that could not be read: item 3 is")
    assert feats.to_dict()["skipped"] == 3
    assert feats.subset([0, 1]).skipped == [3, 8, 9]


def test_capture_with_every_example_unreadable_says_so():
    with pytest.raises(ValueError, match="None of the 4 examples of 'data' could be read"):
        capture(
            _tiny_linear(),
            WithBadItems(4, {0, 1, 2, 3}),
            ["0"],
            progress=False,
            skip_unreadable=True,
        )


def test_skipping_batches_catches_in_dataloader_workers():
    out = list(skipping_batches(WithBadItems(6, {1, 4}), 3, num_workers=1))
    assert [skipped for _, skipped in out] == [[(1, "item 1 is broken")], [(4, "item 4 is broken")]]
    assert [batch[1].tolist() for batch, _ in out] == [[0, 0], [1, 1]]


class _BatchedUnreadable(torch.utils.data.Dataset):
    """A dataset with a batched fetch (DataLoader's ``__getitems__``) and unreadable items."""

    def __init__(self, n, bad):
        self.n, self.bad, self.batched_calls = n, set(bad), 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise Unreadable(f"item {i}", item=f"img{i}.png")
        return torch.full((2,), float(i)), i % 2

    def __getitems__(self, indices):
        self.batched_calls += 1
        return [self[i] for i in indices]


def test_skipping_batches_uses_a_batched_fetch_and_keeps_the_readable_items():
    ds = _BatchedUnreadable(10, bad=[3, 8])
    got = list(skipping_batches(ds, 4))
    assert ds.batched_calls == 3  # every batch tried batched; the two with a bad item retried
    rows = torch.cat([batch[0] for batch, _ in got])
    assert rows[:, 0].tolist() == [0, 1, 2, 4, 5, 6, 7, 9]
    assert [s for _, left in got for s in left] == [(3, "img3.png"), (8, "img8.png")]
