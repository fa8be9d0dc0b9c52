"""Crystal graph network: atom embeddings, edge-gated graph convolutions, pooling, property heads.

The layer is the edge-gated graph convolution of Bresson & Laurent ("Residual Gated Graph
ConvNets", arXiv:1711.07553, 2017) as used by ALIGNN (Choudhary & DeCost, npj Comput. Mater.
7, 185, 2021), on Gaussian-expanded interatomic distances as in CGCNN (Xie & Grossman, PRL 120,
145301, 2018). A CGCNN convolution is available as an alternative (``conv="cgcnn"``); both layers live in
:mod:`matmeta.models.layers`.
LayerNorm only (no BatchNorm: running statistics would mix MAML tasks).

The model reads plain tensors (see :class:`GraphBatch`), never modifies them, and returns one
row per graph: ``[heat per atom (normalised), metal logit, band gap (normalised)]``. Turning
those into eV is the app's job (``matmeta.predict``), with statistics stored in the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from matmeta.models.activations import ACTIVATIONS, make_activation
from matmeta.models.layers import CGConv, EdgeGatedConv, GaussianExpansion, scatter_sum

N_ELEMENTS = 119  # row 0 is the UNK element (never seen in training), rows 1..118 are Z
OUTPUTS = ("heat_per_atom", "metal_logit", "gap")


@dataclasses.dataclass(frozen=True)
class GNNConfig:
    """Architecture of :class:`CrystalGNN` (saved in every checkpoint).

    Attributes:
        hidden: width of atom and edge features.
        layers: number of graph convolutions.
        n_rbf: Gaussians in the distance expansion.
        cutoff_angstrom: largest distance the expansion covers (the graph's cutoff).
        conv: ``"edge_gated"`` (ALIGNN-style, edge features updated) or ``"cgcnn"``.
        dropout: dropout before the last head layer (also used for MC-dropout uncertainty).
        node_features: atom inputs: ``"embedding"`` (learned per-element vector), ``"descriptors"``
            (physical element descriptors + formal-oxidation-state features, see
            :mod:`matmeta.elements`; carries over to elements never seen in training) or ``"both"``.
        composition_features: add the composition's charge-balance flags (closed-shell, even-d)
            to the pooled vector before the heads.
        open_shell_metal_offset: added to the metal logit of a composition that cannot be
            charge-balanced with closed-shell ions (a hurdle: such compositions are almost always
            metals at the GLLB-SC level). Not trained: set after training from out-of-fold
            families (``[uncertainty] open_shell_metal_offset``); 0 leaves the network's logit as it is.
        activation: ``"silu"`` or ``"rational"`` (SiLU plus a learned rational term whose shape is meta-learned
            in the outer loop only, :mod:`matmeta.models.activations`).
    """

    hidden: int = 64
    layers: int = 3
    n_rbf: int = 32
    cutoff_angstrom: float = 6.0
    conv: str = "edge_gated"
    dropout: float = 0.1
    node_features: str = "embedding"
    composition_features: bool = False
    open_shell_metal_offset: float = 0.0
    activation: str = "silu"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.node_features not in ("embedding", "descriptors", "both"):
            raise ValueError(f"node_features must be 'embedding', 'descriptors' or 'both', got {self.node_features!r}")
        if self.conv not in ("edge_gated", "cgcnn"):
            raise ValueError(f"conv must be 'edge_gated' or 'cgcnn', got {self.conv!r}")
        if self.hidden < 1 or self.layers < 1 or self.n_rbf < 2 or self.cutoff_angstrom <= 0:
            raise ValueError("hidden, layers >= 1, n_rbf >= 2 and cutoff_angstrom > 0 are required")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.open_shell_metal_offset < float("inf"):
            raise ValueError(f"open_shell_metal_offset must be finite and >= 0, got {self.open_shell_metal_offset}")


@dataclasses.dataclass(frozen=True)
class GraphBatch:
    """A batch of crystal graphs as the model reads them (a plain container, not a pytree).

    Shapes:
        atomic_numbers: (N,) int64, 0 = unknown element.
        edge_index: (2, E) int64, row 0 = neighbour j (source), row 1 = centre i (target).
        edge_dist: (E,) float32, Å.
        batch: (N,) int64, graph of each atom.
        n_atoms: (G,) float32 atoms per graph.
        y: (G, 3) float32 normalised targets ``[heat per atom, is_metal, gap]``; NaN = unknown.
        atom_features, graph_features: (N, 4), (G, 4) precomputed composition features, or None (the
            model computes them).
    """

    atomic_numbers: Tensor
    edge_index: Tensor
    edge_dist: Tensor
    batch: Tensor
    n_atoms: Tensor
    y: Tensor
    atom_features: Tensor | None = None
    graph_features: Tensor | None = None

    @property
    def num_graphs(self) -> int:
        """Number of graphs G."""
        return int(self.n_atoms.shape[0])

    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """Positional arguments of :meth:`CrystalGNN.forward`."""
        return self.atomic_numbers, self.edge_index, self.edge_dist, self.batch, self.num_graphs

    def extra(self) -> dict[str, Tensor]:
        """Keyword arguments of :meth:`CrystalGNN.forward`: the composition features when precomputed."""
        if self.atom_features is None or self.graph_features is None:
            return {}
        return {"atom_features": self.atom_features, "graph_features": self.graph_features}

    def reduce(self, per_graph: Tensor) -> Tensor:
        """Mean of a per-graph loss (G,) over the batch's graphs."""
        return per_graph.mean()


def collate(
    graphs: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
    features: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> GraphBatch:
    """Concatenate ``(atomic_numbers, edge_index, edge_dist, y)`` graphs into one :class:`GraphBatch`.

    ``features``: each graph's precomputed composition features (atom (n, 4), graph (4,)), or None.

    Shapes:
        each graph: (n,), (2, e), (e,), (3,) → batch as in :class:`GraphBatch`.
    """
    if not graphs:
        raise ValueError("collate needs at least one graph")
    sizes = torch.tensor([g[0].shape[0] for g in graphs])
    offsets = torch.cumsum(sizes, 0) - sizes
    edge_index = torch.cat([g[1] + int(o) for g, o in zip(graphs, offsets.tolist(), strict=True)], dim=1)
    return GraphBatch(
        atomic_numbers=torch.cat([g[0] for g in graphs]),
        edge_index=edge_index,
        edge_dist=torch.cat([g[2] for g in graphs]),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), sizes),
        n_atoms=sizes.to(torch.float32),
        y=torch.stack([g[3] for g in graphs]),
        atom_features=None if features is None else torch.from_numpy(np.concatenate([f[0] for f in features])),
        graph_features=None if features is None else torch.from_numpy(np.stack([f[1] for f in features])),
    )


def composition_inputs(atomic_numbers: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Composition features of every graph of a batch (:func:`matmeta.elements.composition_features`).

    Python per graph (cached per composition); :mod:`matmeta.predict.batched` computes them once per
    structure so the model can run under ``vmap``.

    Shapes:
        atomic_numbers: (N,), batch: (N,) sorted → atom (N, 4) float32, graph (G, 4) float32.
    """
    from matmeta.elements import composition_features

    z = atomic_numbers.tolist()
    bounds = torch.cumsum(torch.bincount(batch, minlength=num_graphs), 0).tolist()
    parts = [composition_features(z[a:b]) for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]
    atom = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    return atom, torch.from_numpy(np.stack([p[1] for p in parts]))


class CrystalGNN(nn.Module):
    """Crystal graph network with a heat-of-formation head and a two-stage band-gap head.

    Outputs per graph: the normalised heat of formation per atom, the logit of P(metal) and the
    normalised band gap of a non-metal (MEGNet-style two-stage gap model). ``head_prefixes``
    names the head for ANIL (adapt the head only).

    Args:
        config: the architecture.

    Shapes:
        atomic_numbers: (N,), edge_index: (2, E), edge_dist: (E,), batch: (N,) → (G, 3).
    """

    head_prefixes = ("head.",)

    def __init__(self, config: GNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or GNNConfig()
        hidden = self.config.hidden
        if self.config.node_features in ("embedding", "both"):
            self.embedding = nn.Embedding(N_ELEMENTS, hidden)
        if self.config.node_features in ("descriptors", "both"):
            from matmeta.elements import ATOM_FEATURES, descriptor_table

            self.register_buffer("element_table", torch.from_numpy(descriptor_table()))
            self.descriptor_proj = nn.Linear(self.element_table.shape[1] + len(ATOM_FEATURES), hidden)
        if self.config.composition_features:
            from matmeta.elements import GRAPH_FEATURES

            self.composition_proj = nn.Linear(len(GRAPH_FEATURES), hidden)
        self.rbf = GaussianExpansion(self.config.cutoff_angstrom, self.config.n_rbf)
        self.edge_embedding = nn.Linear(self.config.n_rbf, hidden)
        layer = EdgeGatedConv if self.config.conv == "edge_gated" else CGConv
        self.convs = nn.ModuleList(layer(hidden, self.config.activation) for _ in range(self.config.layers))
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden),
            make_activation(self.config.activation),
            nn.Dropout(self.config.dropout),
            nn.Linear(hidden, len(OUTPUTS)),
        )

    def forward(
        self,
        atomic_numbers: Tensor,
        edge_index: Tensor,
        edge_dist: Tensor,
        batch: Tensor,
        num_graphs: int,
        mc_samples: int = 0,
        mc_seed: int = 0,
        atom_features: Tensor | None = None,
        graph_features: Tensor | None = None,
        include_point: bool = False,
    ) -> Tensor:
        """Per-graph outputs ``[heat per atom (norm.), metal logit, gap (norm.)]``.

        Args:
            atomic_numbers: element of each atom (0 = unknown element).
            edge_index: neighbour (row 0) and centre (row 1) of each edge.
            edge_dist: length of each edge in Å.
            batch: graph of each atom.
            num_graphs: G.
            mc_samples: when > 0, return that many Monte-Carlo-dropout samples of the head
                (dropout active whatever the mode; the graph part is computed once). The same
                ``mc_samples`` dropout masks (drawn from ``mc_seed``) are used for every graph, so
                a structure's samples do not depend on the rest of the batch.
            mc_seed: seed of the dropout masks.
            atom_features: precomputed per-atom composition features
                (:func:`matmeta.elements.composition_features` of every graph, the numbers the model
                computes itself when None); needed under ``torch.func.vmap``, where the model cannot
                read atomic numbers back into Python.
            graph_features: the per-graph composition features, likewise.
            include_point: with ``mc_samples``, also the deterministic output, as row 0 (one pass of the
                graph part for both: prediction runs the network once).

        Shapes:
            → (G, 3), or (mc_samples, G, 3) when ``mc_samples > 0`` ((1 + mc_samples, G, 3) with ``include_point``).
        """
        h, graph_features = self.atom_inputs(atomic_numbers, batch, num_graphs, atom_features, graph_features)
        e = self.edge_embedding(self.rbf(edge_dist))
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            h, e = conv(h, edge_index, e, update_edges=i < last)
        counts = scatter_sum(torch.ones_like(batch, dtype=h.dtype)[:, None], batch, num_graphs)
        pooled = scatter_sum(h, batch, num_graphs) / counts.clamp(min=1.0)
        if self.config.composition_features:
            pooled = pooled + self.composition_proj(graph_features)
        if mc_samples <= 0:
            return self.hurdle(self.head(pooled), graph_features)
        hidden = self.head[1](self.head[0](pooled))
        generator = torch.Generator(device=hidden.device).manual_seed(mc_seed)
        keep = torch.rand(mc_samples, 1, hidden.shape[1], generator=generator, device=hidden.device)
        masks = (keep >= self.config.dropout).to(hidden.dtype) / (1.0 - self.config.dropout)
        if include_point:  # row 0: no dropout (eval-mode head)
            masks = torch.cat([torch.ones_like(masks[:1]), masks])
        return self.hurdle(self.head[3](hidden * masks), graph_features)

    def hurdle(self, out: Tensor, graph_features: Tensor | None) -> Tensor:
        """``out`` with ``open_shell_metal_offset`` added to the metal logit of open-shell compositions.

        Shapes:
            out: (..., G, 3), graph_features: (G, F) → (..., G, 3).
        """
        offset = self.config.open_shell_metal_offset
        if offset == 0.0 or graph_features is None:
            return out
        from matmeta.elements import GRAPH_FEATURES

        closed = graph_features[:, GRAPH_FEATURES.index("balanced_closed_shell")]
        shift = torch.stack([torch.zeros_like(closed), offset * (1.0 - closed), torch.zeros_like(closed)], dim=-1)
        return out + shift

    def atom_inputs(
        self,
        atomic_numbers: Tensor,
        batch: Tensor,
        num_graphs: int,
        atom: Tensor | None = None,
        graph_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Initial atom features (N, H) and, with composition features or the hurdle, graph features (G, F).

        ``atom`` (N, 4) and ``graph_features`` (G, 4): the composition features when precomputed.
        """
        mode = self.config.node_features
        h = self.embedding(atomic_numbers) if mode in ("embedding", "both") else None
        needs_graph = self.config.composition_features or self.config.open_shell_metal_offset != 0.0
        if mode != "embedding" or needs_graph:
            if atom is None or graph_features is None:
                atom, graph_features = composition_inputs(atomic_numbers, batch, num_graphs)
            atom, graph_features = atom.to(self.rbf.centers), graph_features.to(self.rbf.centers)
            if mode != "embedding":
                desc = self.descriptor_proj(torch.cat([self.element_table[atomic_numbers], atom], dim=1))
                h = desc if h is None else h + desc
        return h, graph_features if needs_graph else None  # type: ignore[return-value]

    def set_unknown_embedding(self, seen: Sequence[int]) -> None:
        """Set the UNK row (0) to the mean embedding of the elements seen in training."""
        if not hasattr(self, "embedding"):
            return
        with torch.no_grad():
            rows = torch.as_tensor(sorted(set(seen)), dtype=torch.long)
            self.embedding.weight[0] = self.embedding.weight[rows].mean(0)


@contextlib.contextmanager
def head_features(model: Any) -> Iterator[dict[str, Any]]:
    """Capture the output of the head's hidden activation (``model.head[1]``) during the next forward pass.

    Yields a dict whose ``"features"`` entry is the (G, H) tensor of the FIRST forward pass inside
    the block (a Monte-Carlo pass afterwards does not overwrite it).
    """
    captured: dict[str, Any] = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured.setdefault("features", output.detach())

    handle = model.head[1].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
