"""The padding probe: 4 tokens only where this machine's products round a row alike for every
number of rows; else 8."""

import torch

from streamscore.models.padding import CANDIDATES, padding_multiple


class RowWise(torch.nn.Linear):
    """A linear layer computed row by row without a matrix library: the same for any row count."""

    def forward(self, x):
        return torch.stack([self.weight @ row + self.bias for row in x])


class RoundsByRowCount(RowWise):
    """Rounds differently when the rows are not a multiple of 8, as a tail kernel might."""

    def forward(self, x):
        out = super().forward(x)
        return out + 1e-6 if x.shape[0] % 8 else out


def test_the_finest_padding_where_every_row_count_rounds_alike():
    assert padding_multiple([RowWise(13, 7)]) == CANDIDATES[0] == 4


def test_the_coarser_padding_where_some_row_counts_round_otherwise():
    # One layer that misbehaves is enough, whatever the others do.
    assert padding_multiple([RowWise(11, 5), RoundsByRowCount(5, 11)]) == 8


def test_the_answer_is_kept_per_layer_shapes():
    calls = []

    class Counted(RowWise):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    assert padding_multiple([Counted(17, 3)]) == 4
    probed = len(calls)
    assert probed > 20 and padding_multiple([Counted(17, 3)]) == 4 and len(calls) == probed
