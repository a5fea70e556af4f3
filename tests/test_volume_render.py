"""Volume rendering of dense grids (pc3d.ops.volume_render) against closed forms and per-ray loops."""

from __future__ import annotations

import math

import pytest
import torch

from pc3d.ops.volume_render import (
    cell_index,
    composite,
    march_rays,
    occupied_samples,
    ray_box_intersection,
    sample_grid,
    transmittance,
)

BOX = torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 3.0]])


def test_ray_box_intersection_enters_and_leaves_where_the_slabs_say():
    origins = torch.tensor([[-5.0, 0.0, 1.0], [0.0, 0.0, 1.0], [-5.0, 5.0, 1.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    t_near, t_far = ray_box_intersection(origins, directions, BOX)
    assert t_near[0] == pytest.approx(4.0) and t_far[0] == pytest.approx(6.0)
    assert t_near[1] == pytest.approx(0.0) and t_far[1] == pytest.approx(2.0)  # starts inside: near clamps to 0
    assert t_far[2] <= t_near[2]  # misses


def test_march_rays_packs_samples_at_the_step_inside_the_box():
    origins = torch.tensor([[-5.0, 0.0, 1.0], [-5.0, 5.0, 1.0], [0.0, 0.0, -4.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    samples = march_rays(origins, directions, BOX, step=0.25)
    counts = torch.bincount(samples.ray_index, minlength=3)
    assert counts.tolist() == [8, 0, 12]  # 2 / 0.25, a miss, 3 / 0.25
    first = samples.points[samples.ray_index == 0]
    assert torch.allclose(first[:, 0], -1.0 + 0.125 + 0.25 * torch.arange(8.0))  # mid-step offsets
    assert (samples.ray_index.diff() >= 0).all()
    jittered = march_rays(origins, directions, BOX, step=0.25, offsets=torch.tensor([0.0, 0.0, 0.9]))
    assert jittered.points[jittered.ray_index == 0][0, 0] == pytest.approx(-1.0)
    assert (jittered.t[jittered.ray_index == 2] < 4.0 + 3.0).all()


def test_sample_grid_is_trilinear_between_cell_centres_and_held_beyond():
    values = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    box = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 5.0]])  # unit cells
    centres = torch.tensor([[0.5, 0.5, 0.5], [2.5, 3.5, 4.5], [1.5, 2.5, 0.5]])
    assert torch.allclose(sample_grid(values, centres, box), values[:, [0, 2, 1], [0, 3, 2], [0, 4, 0]].T, atol=1e-4)
    between = torch.tensor([[1.0, 2.0, 3.0]])  # the corner shared by 8 cells: their mean
    expected = values[:, 0:2, 1:3, 2:4].mean(dim=(1, 2, 3))
    assert torch.allclose(sample_grid(values, between, box)[0], expected, atol=1e-4)
    outside = torch.tensor([[-7.0, 0.5, 0.5]])
    assert torch.allclose(sample_grid(values, outside, box)[0], values[:, 0, 0, 0], atol=1e-4)


def test_composite_matches_a_per_ray_loop_and_its_gradients_flow():
    torch.manual_seed(0)
    ray_index = torch.tensor([0, 0, 0, 2, 2, 3])
    alpha = torch.rand(6, dtype=torch.float64, requires_grad=True)
    colors = torch.rand(6, 3, dtype=torch.float64, requires_grad=True)
    background = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    rgb, opacity, weights = composite(ray_index, alpha, colors, 4, background)
    for ray in range(4):
        transmittance, expected = 1.0, torch.zeros(3, dtype=torch.float64)
        for i in (ray_index == ray).nonzero()[:, 0].tolist():
            expected = expected + transmittance * alpha[i] * colors[i]
            assert weights[i].item() == pytest.approx(transmittance * alpha[i].item())
            transmittance = transmittance * (1 - alpha[i].item())
        assert opacity[ray].item() == pytest.approx(1 - transmittance)
        assert torch.allclose(rgb[ray], expected + transmittance * background)
    assert torch.allclose(rgb[1], background)  # a ray without samples shows the background
    assert torch.autograd.gradcheck(lambda a, c: composite(ray_index, a, c, 4, background)[0],
                                    (alpha.detach().clamp(0.05, 0.9).requires_grad_(), colors))


def test_composite_keeps_each_rays_transmittance_after_many_opaque_rays():
    """The running sum of log-transmittance over a batch is large; one ray's share must survive it."""
    rays = 20000
    ray_index = torch.arange(rays).repeat_interleave(4)
    alpha = torch.full((rays * 4,), 0.999)
    alpha[-4:] = torch.tensor([0.1, 0.2, 0.0, 0.3])
    colors = torch.ones(rays * 4, 1)
    _, opacity, _ = composite(ray_index, alpha, colors, rays)
    assert opacity[-1].item() == pytest.approx(1 - 0.9 * 0.8 * 0.7, abs=1e-6)


def test_occupied_samples_and_cell_index():
    occupancy = torch.zeros(2, 4, 3, dtype=torch.bool)
    occupancy[1, 2, 0] = True
    points = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.5, 0.2], [5.0, 0.5, 0.5], [0.9, 1.9, 2.9]])
    box = torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 3.0]])
    cells, inside = cell_index(points, box, (2, 4, 3))
    assert cells.tolist()[0] == [1, 2, 0] and inside.tolist() == [True, True, False, True]
    samples = march_rays(torch.tensor([[0.5, 0.5, -1.0]]), torch.tensor([[0.0, 0.0, 1.0]]), box, step=0.5)
    kept = occupied_samples(samples, occupancy, box)
    assert kept.tolist() == [True, True, False, False, False, False]  # z in [0, 1): the occupied cell
    assert math.isclose(samples.select(kept).t.max().item(), 1.75)


def test_transmittance_is_the_light_left_before_each_sample_of_its_own_ray():
    ray_index = torch.tensor([0, 0, 0, 2, 2])
    alpha = torch.tensor([0.5, 0.5, 0.2, 0.9, 0.1])
    expected = torch.tensor([1.0, 0.5, 0.25, 1.0, 0.1])
    assert torch.allclose(transmittance(ray_index, alpha, 3), expected)
    assert transmittance(ray_index[:0], alpha[:0], 3).shape == (0,)
