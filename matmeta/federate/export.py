"""The federation's result as an ordinary predictor checkpoint (``matmeta predict/finetune --model``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matmeta.federate.aggregate import ServerState
from matmeta.federate.config import FederatedRecipe


def predictor_state(recipe: FederatedRecipe, state: ServerState, inference: bool = True) -> Any:
    """The engine (``PredictorMAML``) holding the shared weights, UNK embedding set from the labs' elements."""
    from matmeta.federate.tasks import build_maml

    maml = build_maml(recipe.model, recipe.maml_settings(), inference=inference)
    maml.load_state_dict(state.params, strict=True)
    elements = state.extra.get("elements") or list(range(1, 84))
    maml.model.set_unknown_embedding(elements)  # type: ignore[operator]
    maml.eval()
    return maml


def export_predictor(recipe: FederatedRecipe, state: ServerState, path: str | Path, recipe_dict: dict) -> Path:
    """Write the shared start as a predictor checkpoint; family names are not known to the server and not stored.

    Raises:
        MatmetaError: the statistics round never completed (no normalisation to store).
    """
    from matmeta.checkpoint import save_checkpoint
    from matmeta.errors import MatmetaError
    from matmeta.federate.tasks import TARGETS, UNITS
    from matmeta.graphs import GraphConfig
    from matmeta.recipes import config_to_dict

    if "stats" not in state.extra:
        raise MatmetaError(f"{path}: no lab ever answered the statistics round; nothing to export")
    maml = predictor_state(recipe, state)
    graph = GraphConfig(cutoff_angstrom=recipe.model.cutoff_angstrom, max_neighbors=recipe.data.max_neighbors)
    metadata = {
        "kind": "predictor",
        "model_class": "CrystalGNN",
        "model_config": config_to_dict(recipe.model),
        "graph_config": graph.to_dict(),
        "maml": config_to_dict(recipe.maml_settings()),
        "targets": {"names": list(TARGETS), "units": UNITS, "stats": dict(state.extra["stats"])},
        "families": {"by": recipe.data.family_by, "train": [], "val": [], "test": []},
        "elements_seen": [int(z) for z in state.extra.get("elements", [])],
        "uncertainty": {"method": "mc_dropout", "mc_samples": 8},
        "adapted": None,
        "federated": {"rounds": state.round, "history": state.history[-50:]},
        "recipe": recipe_dict,
    }
    return save_checkpoint(path, maml.state_dict(), metadata)
