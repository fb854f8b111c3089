"""Axes: one sequence per column or per row (layers/grouping/axes.py)."""

import pytest
import torch

from vitlab.layers.grouping.axes import Axes

CPU = torch.device("cpu")


def test_axial_sequences_are_columns_or_rows_and_ungroup_back():
    x = torch.randn(2, 3, 4, 5)
    columns, rows = Axes("columns"), Axes("rows")
    plan = columns.plan((4, 5), CPU)
    assert plan.padded == (4, 5)  # nothing is padded
    sequences = columns.group(x, plan)
    assert sequences.shape == (2 * 5, 3, 4)
    torch.testing.assert_close(sequences[1 * 5 + 2], x[1, :, :, 2])  # image 1, column 2
    torch.testing.assert_close(columns.ungroup(sequences, plan), x)
    plan = rows.plan((4, 5), CPU)
    sequences = rows.group(x, plan)
    assert sequences.shape == (2 * 4, 3, 5)
    torch.testing.assert_close(sequences[0 * 4 + 3], x[0, :, 3, :])  # image 0, row 3
    torch.testing.assert_close(rows.ungroup(sequences, plan), x)


def test_axis_is_rows_or_columns():
    with pytest.raises(ValueError, match="axis must be one of"):
        Axes("height")
