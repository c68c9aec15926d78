"""Candidate samplers of the sampled losses, as TensorFlow's: log-uniform (Zipfian over popularity-sorted ids,
ComiRec's and PIMI's default) and uniform (REMI's, RecTools'); ``probability`` of one draw, ``draw`` with
replacement, ``sample`` / ``sample_unique`` for a batch's shared negatives with TF's expected counts
(docs/models.md 2.4, 6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# id ranges up to this size use [range] lookup tables (first draws, hit columns) instead of sorting
SMALL_ID_RANGE = 1 << 18


@dataclass
class SampledCandidates:
    """What TF's candidate samplers return: ids and expected counts for the sampled and the true classes."""

    sampled: torch.Tensor  # int64 [num_sampled], in order of (first) draw
    sampled_expected_count: torch.Tensor  # float64 [num_sampled]
    true_expected_count: torch.Tensor  # float64 [B]
    num_tries: int
    distinct: bool = True  # False when drawn with replacement (unique=False): ids may repeat


class CandidateSampler:
    """A TF candidate sampler over ids ``offset .. offset + range_max - 1``: ``probability`` of one draw and
    ``draw`` (independent draws with replacement); :meth:`sample` turns them into a shared batch of negatives."""

    def __init__(self, range_max: int, offset: int = 0):
        if range_max < 1:
            raise ValueError(f"{type(self).__name__}: range_max must be >= 1, got {range_max}")
        self.range_max = int(range_max)
        self.offset = int(offset)
        self._chunk_sizes: dict[int, int] = {}
        self.scatter_limit = SMALL_ID_RANGE  # sort-free first-draw table and probability tables up to this range
        self._probability_tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(
        self,
        num_sampled: int,
        true_ids: torch.Tensor,
        generator: torch.Generator | None = None,
        unique: bool = True,
    ) -> SampledCandidates:
        """TF ``unique=True`` (:meth:`sample_unique`) or ``unique=False``: ``num_sampled`` draws with replacement,
        expected count ``p * num_sampled`` (TF ``ExpectedCountHelper`` with num_tries = num_sampled)."""
        if unique:
            return self.sample_unique(num_sampled, true_ids, generator)
        if num_sampled < 1:
            raise ValueError(f"sampled softmax: num_sampled must be >= 1, got {num_sampled}")
        sampled = self.draw(num_sampled, generator)
        return SampledCandidates(
            sampled=sampled,
            sampled_expected_count=self.expected_count(sampled, num_sampled, num_sampled),
            true_expected_count=self.expected_count(true_ids.detach().cpu(), num_sampled, num_sampled),
            num_tries=num_sampled,
            distinct=False,
        )

    def sample_unique(
        self, num_sampled: int, true_ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> SampledCandidates:
        """TF ``RangeSampler::SampleBatchGetExpectedCountAvoid`` with ``unique=True``, vectorised.

        Draws with replacement until ``num_sampled`` distinct ids are seen, counting the tries; the expected
        count of an id with probability p is ``-expm1(num_tries * log1p(-p))`` (``p * num_sampled`` when
        no draw was repeated), for the sampled and the true classes alike (TF ``ExpectedCountHelper``).
        """
        if not 0 < num_sampled <= self.range_max:
            raise ValueError(
                f"sampled softmax: num_sampled={num_sampled} distinct negatives cannot be drawn from "
                f"{self.range_max} classes (TF requires num_sampled <= num_classes when unique=True)"
            )
        draws = torch.empty(0, dtype=torch.int64)
        chunk = self._first_chunk(num_sampled)
        while True:
            draws = torch.cat([draws, self.draw(chunk, generator)])
            found = self._first_occurrences(draws, num_sampled)
            if found is not None:
                sampled, num_tries = found
                break
            chunk *= 2
        return SampledCandidates(
            sampled=sampled,
            sampled_expected_count=self.expected_count(sampled, num_sampled, num_tries),
            true_expected_count=self.expected_count(true_ids.detach().cpu(), num_sampled, num_tries),
            num_tries=num_tries,
        )

    def _first_occurrences(self, draws: torch.Tensor, num_sampled: int) -> tuple[torch.Tensor, int] | None:
        """The first ``num_sampled`` distinct values of ``draws`` in draw order and the number of draws they took
        (None if there are fewer). Small id ranges: one scatter over a [range_max] table marks each id's first
        draw (no sort); large ones: ``torch.unique`` + argsort of the first positions."""
        positions = torch.arange(len(draws))
        if self.range_max <= self.scatter_limit:
            first = torch.full((self.range_max,), len(draws), dtype=torch.int64)
            first.scatter_reduce_(0, draws - self.offset, positions, reduce="amin")
            first_draws = torch.nonzero(first[draws - self.offset] == positions).squeeze(1)  # ascending
            if len(first_draws) < num_sampled:
                return None
            taken = first_draws[:num_sampled]
            return draws[taken], int(taken[-1]) + 1
        values, inverse = torch.unique(draws, return_inverse=True)
        if len(values) < num_sampled:
            return None
        first = torch.full((len(values),), len(draws), dtype=torch.int64)
        first = first.scatter_reduce(0, inverse, positions, reduce="amin")
        order = torch.argsort(first)[:num_sampled]
        return values[order], int(first[order[-1]]) + 1

    def _first_chunk(self, num_sampled: int) -> int:
        """Draws in the first chunk: 10% above the expected tries for num_sampled distinct ids (stateless,
        a function of (range_max, num_sampled) only, so resumed runs consume the generator identically)."""
        if num_sampled not in self._chunk_sizes:
            _, log1m_p = self._probabilities(torch.arange(self.range_max) + self.offset)
            lo, hi = float(num_sampled), float(num_sampled)
            distinct = lambda t: float(-torch.expm1(t * log1m_p).sum())  # noqa: E731
            while distinct(hi) < num_sampled and hi < 1e12:
                hi *= 2
            for _ in range(50):  # bisection on E[#distinct after t draws] = num_sampled
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if distinct(mid) < num_sampled else (lo, mid)
            self._chunk_sizes[num_sampled] = int(1.1 * hi) + 64
        return self._chunk_sizes[num_sampled]

    def expected_count(self, ids: torch.Tensor, num_sampled: int, num_tries: int) -> torch.Tensor:
        """TF ``ExpectedCountHelper``: p * batch if no repeat, else 1 - (1 - p)^num_tries (stable form)."""
        p, log1m_p = self._probabilities(ids)
        return p * num_sampled if num_tries == num_sampled else -torch.expm1(num_tries * log1m_p)

    def _probabilities(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P(id) and log(1 - P(id)). Small CPU id ranges: looked up in tables over ids 0 .. offset + range_max - 1
        built once (a step has ~1,400 ids); large ranges, other devices or ids beyond the range: computed."""
        size = self.offset + self.range_max
        if size > self.scatter_limit or ids.device.type != "cpu" or (len(ids) and int(ids.max()) >= size):
            p = self.probability(ids)
            return p, torch.log1p(-p)
        if self._probability_tables is None:
            p = self.probability(torch.arange(size))
            self._probability_tables = p, torch.log1p(-p)
        p_table, log1m_p_table = self._probability_tables
        return p_table[ids], log1m_p_table[ids]


class LogUniformSampler(CandidateSampler):
    """TF ``log_uniform_candidate_sampler``: P(k) = (log(k+2) - log(k+1)) / log(range_max+1), k in [0, range_max).

    ``offset`` shifts the ids: with ``offset=1`` the ids ``1..range_max`` are drawn (P(id) uses ``id - 1``),
    which keeps the padding id 0 out of the negatives (an option; TF/ComiRec sample id 0 too).
    """

    def __init__(self, range_max: int, offset: int = 0):
        super().__init__(range_max, offset)
        self.log_range = math.log1p(self.range_max)  # TF range_sampler.cc: log_range_ = log1p(range)

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """P(id) of one draw (float64); ids outside the range get 0."""
        k = ids.to(torch.float64) - self.offset
        p = torch.log((k + 2.0) / (k + 1.0)) / self.log_range
        inside = (k >= 0) & (k < self.range_max)
        return torch.where(inside, p, torch.zeros_like(p))

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` independent draws with replacement (inverse CDF, as TF: floor(exp(u log(R+1))) - 1, mod R)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        k = torch.exp(u * self.log_range).to(torch.int64) - 1
        return torch.remainder(k, self.range_max) + self.offset


class UniformSampler(CandidateSampler):
    """TF ``uniform_candidate_sampler``: P(id) = 1 / range_max (REMI's default noise, ``sample_prob = 0``)."""

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        k = ids.to(torch.float64) - self.offset
        inside = (k >= 0) & (k < self.range_max)
        return inside.to(torch.float64) / self.range_max

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(self.range_max, (n,), generator=generator) + self.offset


def make_candidate_sampler(kind: str, range_max: int, offset: int = 0) -> CandidateSampler:
    """``"log_uniform"`` (TF/ComiRec default) or ``"uniform"`` (REMI's default)."""
    samplers = {"log_uniform": LogUniformSampler, "uniform": UniformSampler}
    if kind not in samplers:
        raise ValueError(f"unknown negative sampler {kind!r}; choose one of {sorted(samplers)}")
    return samplers[kind](range_max, offset)


__all__ = [
    "SMALL_ID_RANGE",
    "CandidateSampler",
    "LogUniformSampler",
    "UniformSampler",
    "SampledCandidates",
    "make_candidate_sampler",
]
