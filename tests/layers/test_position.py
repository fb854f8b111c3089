import math

import pytest
import torch

from vitlab.layers import resize_pos_embed, sinusoidal_1d, sinusoidal_2d
from vitlab.layers.position import (
    crop_relative_position_table,
    relative_index_1d,
    relative_position_index,
    resize_relative_position_table,
    resize_relative_table_1d,
    row_column_embeddings,
)


def test_sinusoidal_1d_follows_the_paper():
    table = sinusoidal_1d(50, 16)
    pos, i = 7, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


def test_sinusoidal_2d_encodes_rows_then_columns():
    table = sinusoidal_2d(3, 4, 16).view(3, 4, 16)
    torch.testing.assert_close(table[2, 1, :8], sinusoidal_1d(3, 8)[2])
    torch.testing.assert_close(table[2, 1, 8:], sinusoidal_1d(4, 8)[1])
    with pytest.raises(ValueError, match="divisible by 4"):
        sinusoidal_2d(3, 4, 10)


def test_resize_pos_embed_keeps_prefix_and_resizes_grid():
    table = torch.randn(1, 2 + 16, 8)
    resized = resize_pos_embed(table, (6, 3), num_prefix_tokens=2)
    assert resized.shape == (1, 2 + 18, 8)
    assert torch.equal(resized[:, :2], table[:, :2])
    assert resize_pos_embed(table, (4, 4), num_prefix_tokens=2) is table
    with pytest.raises(ValueError, match="not a square"):
        resize_pos_embed(torch.randn(1, 1 + 12, 8), (4, 4))


def test_an_exported_graph_resamples_at_the_own_size_too_and_that_is_the_identity(monkeypatch):
    """While exporting, no size comparison may be traced (torch.export would freeze it): the table is
    resampled at its own size as well, which must give it back bit for bit; so must resize_logits."""
    from vitlab.segmentation.base import resize_logits

    table = torch.randn(1, 1 + 7 * 5, 8)
    logits = torch.randn(2, 3, 9, 11)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    seen = []
    interpolate = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: seen.append(1) or interpolate(*a, **k))
    resized = resize_pos_embed(table, (7, 5), (7, 5))
    assert seen and resized is not table and torch.equal(resized, table)
    resized = resize_logits(logits, (9, 11))
    assert len(seen) == 2 and resized is not logits and torch.equal(resized, logits)


def test_compiled_resize_logits_reuses_one_graph_whether_the_sizes_match_or_not():
    """Logits of a stride-2 head upsampled by 2 match an even side and miss an odd one by 1. Compiled, the resize
    is always made (the identity where they match), so no guard on the match: 2 graphs for 3 sizes, not 3."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from vitlab.segmentation.base import resize_logits

    def head(x):
        coarse = torch.nn.functional.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")
        return resize_logits(coarse, (x.shape[-2], x.shape[-1]))

    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(head, fullgraph=True, backend=counter)
    for size in [(8, 8), (10, 12), (9, 13)]:  # static, then symbolic and matching, then symbolic and not
        x = torch.randn(1, 2, *size)
        assert torch.equal(compiled(x), head(x)), size
    assert counter.frame_count == 2


def test_resize_of_a_constant_grid_stays_constant():
    table = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 9, 4), 0.5)], dim=1)
    resized = resize_pos_embed(table, (5, 7), (3, 3))
    torch.testing.assert_close(resized[:, 1:], torch.full((1, 35, 4), 0.5))


def test_relative_position_index_is_query_minus_key_row_major():
    index = relative_position_index((7, 7))
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 168
    assert len(index.unique()) == 169
    query, key = 1 * 7 + 0, 0  # query one row below the key: offset (dy, dx) = (1, 0)
    assert index[query, key] == (1 + 6) * 13 + (0 + 6)
    query, key = 0, 2  # query two columns left of the key: offset (0, -2)
    assert index[query, key] == (0 + 6) * 13 + (-2 + 6)
    assert (index.diagonal() == 84).all()  # the centre row: offset (0, 0)


def test_a_smaller_window_uses_the_central_rows_of_the_table():
    table = torch.randn(13 * 13, 2)
    small = crop_relative_position_table(table, (4, 3), (7, 7))
    assert small.shape == (7 * 5, 2)
    torch.testing.assert_close(small[relative_position_index((4, 3))], table[relative_position_index((4, 3), (7, 7))])
    with pytest.raises(ValueError, match="larger than"):
        relative_position_index((8, 8), (7, 7))


def test_resizing_a_window_table_keeps_the_zero_offset_and_shape():
    table = torch.randn(13 * 13, 3)
    resized = resize_relative_position_table(table, (12, 12))
    assert resized.shape == (23 * 23, 3)
    torch.testing.assert_close(resized[11 * 23 + 11], table[6 * 13 + 6])  # a token's bias to itself
    assert resize_relative_position_table(table, (7, 7)) is table
    with pytest.raises(ValueError, match="not the table of a square window"):
        resize_relative_position_table(torch.randn(10, 3), (7, 7))


def test_axis_index_is_query_minus_key():
    index = relative_index_1d(4)
    assert index.tolist()[1] == [4, 3, 2, 1]  # query 1 to keys 0..3: offsets 1, 0, -1, -2 (+ span - 1)
    assert (index.diagonal() == 3).all()


def test_resized_axis_tables_keep_offset_zero_and_the_extremes():
    table = torch.randn(4, 2 * 5 - 1)
    longer = resize_relative_table_1d(table, 2 * 9 - 1)
    torch.testing.assert_close(longer[:, 8], table[:, 4])  # offset 0
    torch.testing.assert_close(longer[:, [0, -1]], table[:, [0, -1]])
    torch.testing.assert_close(resize_relative_table_1d(table, 5), table[:, 2:7])


def test_row_column_embeddings_give_each_head_its_slice_of_both_tables():
    k, heads, half = 3, 2, 4  # C = 2 * heads * half = 16 channels, d = 8 per head
    rows, cols = torch.randn(k, heads * half), torch.randn(k, heads * half)
    r = row_column_embeddings(rows, cols, heads)
    assert r.shape == (heads, k * k, 2 * half)
    dy, dx, head = 2, 0, 1  # window position (2, 0): row offset +1, column offset -1
    expected = torch.cat([rows[dy, head * half : (head + 1) * half], cols[dx, head * half : (head + 1) * half]])
    torch.testing.assert_close(r[head, dy * k + dx], expected)
