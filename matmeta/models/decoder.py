"""Conditional variational decoder for fixed-size crystal cells (ABX3 perovskites: five sites).

A conditional VAE (Kingma & Welling, ICLR 2014; Sohn et al., NeurIPS 2015) over a canonical cell
representation: species per site (categorical over the elements seen, decoded autoregressively
A → B → X1 → X2 → X3 so that the joint chemistry — which cations balance which anions — is
modelled, not just per-site marginals), then fractional coordinates as angles on the circle
(von Mises likelihood, so 0 and 1 are the same point) and six lattice parameters (log lengths,
angles / 90°; Gaussian), both given the species. The condition is ``[present, is_metal, gap/scale]``;
``present = 0`` is the null condition (condition dropout during training, as in classifier-free
guidance, Ho & Salimans 2022), so the same weights give the conditional and the unconditional decoder.

Per-example negative ELBO::

    L = −log p(species|z,c) − log p(θ|z,c) − log p(lattice|z,c) + β KL(q(z|x,c) ‖ p(z|c))

with a learned conditional prior p(z|c) = N(μ_c, σ_c²), so that sampling z from the prior of a
condition lands where the encoder put the training cells of that condition.

Everything the loss needs (including the reparameterisation noise ``eps``) travels in the batch,
so the loss is deterministic given the batch and same-shaped task batches vectorise under
``torch.func.vmap`` in the MAML engine.

Shapes:
    species: (n, S) int64, element index per site (S = ``n_sites``).
    angles: (n, S, 3) float32, 2π × fractional coordinate.
    lattice: (n, 6) float32, (ln a, ln b, ln c, α/90, β/90, γ/90).
    cond: (n, 3) float32.
    eps: (n, latent_dim) float32, standard normal noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

COND_DIM = 3


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture of :class:`CrystalCVAE`.

    Attributes:
        elements: element symbols, the species vocabulary (index = class).
        n_sites: atoms per cell.
        latent_dim: size of z.
        hidden: width of the hidden layers.
        layers: hidden layers in encoder and decoder.
        beta: weight of the KL term.
        gap_scale_ev: the band gap enters the condition as gap / gap_scale_ev.
        element_features: one row of fixed descriptors per element (standardised; e.g. electronegativity,
            row, group, radius). Species logits are ``q · embed(features)``, so an element never seen
            on a site still gets a chemically sensible logit there (Zr ≈ Ti, Hf), which is what lets
            the inner loop adapt to a new B-site family. Empty: one free embedding per element.
        embed_dim: size of the element embedding.
    """

    elements: tuple[str, ...] = ()
    n_sites: int = 5
    latent_dim: int = 8
    hidden: int = 128
    layers: int = 2
    beta: float = 0.5
    gap_scale_ev: float = 2.0
    element_features: tuple[tuple[float, ...], ...] = ()
    embed_dim: int = 32


def _mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


class CrystalCVAE(nn.Module):
    """Conditional VAE: encoder q(z | x, c), prior p(z | c), decoder p(species, θ, lattice | z, c).

    Args:
        config: the architecture (see :class:`DecoderConfig`).
    """

    head_prefixes = ("trunk.", "species_head.", "geometry_head.")

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        if not config.elements:
            raise ValueError("DecoderConfig.elements must list the species vocabulary")
        self.config = config
        s, v, h = config.n_sites, len(config.elements), config.hidden
        x_dim = s * v + s * 3 * 2 + 6
        self.encoder = _mlp(x_dim + COND_DIM, h, config.layers, 2 * config.latent_dim)
        self.prior = _mlp(COND_DIM, h // 2, 1, 2 * config.latent_dim)
        self.trunk = _mlp(config.latent_dim + COND_DIM, h, config.layers - 1, h)
        self.species_head = _mlp(h + s * v + s, h, 1, config.embed_dim)
        if config.element_features:
            feats = torch.tensor(config.element_features, dtype=torch.float32)
            if feats.shape[0] != v:
                raise ValueError(f"element_features has {feats.shape[0]} rows for {v} elements")
        else:
            feats = torch.eye(v)
        self.register_buffer("element_features", feats, persistent=False)
        self.element_embed = _mlp(feats.shape[1], h // 2, 1, config.embed_dim)
        self.element_bias = nn.Parameter(torch.zeros(v))
        self.geometry_head = _mlp(h + s * v, h, 1, s * 6 + s * 3 + 12)

    def prior_params(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the conditional prior p(z | c) (Sohn et al. 2015).

        Shapes:
            cond (n, 3) -> mu, logvar (n, latent_dim).
        """
        mu, logvar = self.prior(cond).chunk(2, dim=1)
        return mu, logvar.clamp(-8.0, 8.0)

    def encode(self, species: Tensor, angles: Tensor, lattice: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of z.

        Shapes:
            species (n, S), angles (n, S, 3), lattice (n, 6), cond (n, 3) -> mu, logvar (n, latent_dim).
        """
        v = len(self.config.elements)
        onehot = nn.functional.one_hot(species, v).to(angles.dtype).flatten(1)
        circ = torch.stack([angles.cos(), angles.sin()], dim=-1).flatten(1)
        h = self.encoder(torch.cat([onehot, circ, lattice, cond], dim=1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-8.0, 8.0)

    def _hidden(self, z: Tensor, cond: Tensor) -> Tensor:
        return nn.functional.silu(self.trunk(torch.cat([z, cond], dim=1)))

    def species_logits(self, hidden: Tensor, species: Tensor) -> Tensor:
        """Logits of every site given the sites before it (teacher forcing).

        Shapes:
            hidden (n, H), species (n, S) -> (n, S, V).
        """
        s, v = self.config.n_sites, len(self.config.elements)
        onehot = nn.functional.one_hot(species, v).to(hidden.dtype)  # (n, S, V)
        before = torch.tril(torch.ones(s, s, dtype=hidden.dtype, device=hidden.device), diagonal=-1)  # [site, prev]
        prev = (before[None, :, :, None] * onehot[:, None, :, :]).flatten(2)  # (n, S, S*V)
        site = torch.eye(s, dtype=hidden.dtype, device=hidden.device).expand(hidden.shape[0], s, s)
        query = self.species_head(torch.cat([hidden[:, None, :].expand(-1, s, -1), prev, site], dim=2))
        keys = self.element_embed(self.element_features)  # (V, E)
        return query @ keys.T / math.sqrt(self.config.embed_dim) + self.element_bias

    def geometry(self, hidden: Tensor, species: Tensor) -> dict[str, Tensor]:
        """Coordinate and lattice distributions given the species.

        Shapes:
            hidden (n, H), species (n, S) -> ``mean_angle``, ``log_kappa`` (n, S, 3),
            ``lattice_mean``, ``lattice_logstd`` (n, 6).
        """
        s, v = self.config.n_sites, len(self.config.elements)
        onehot = nn.functional.one_hot(species, v).to(hidden.dtype).flatten(1)
        out = self.geometry_head(torch.cat([hidden, onehot], dim=1))
        circ, log_kappa, lat_mean, lat_logstd = torch.split(out, [s * 6, s * 3, 6, 6], dim=1)
        circ = circ.view(-1, s, 3, 2)
        return {
            "mean_angle": torch.atan2(circ[..., 1], circ[..., 0]),
            "log_kappa": log_kappa.view(-1, s, 3).clamp(-3.0, 7.0),
            "lattice_mean": lat_mean,
            "lattice_logstd": lat_logstd.clamp(-4.5, 2.0),
        }

    def forward(self, species: Tensor, angles: Tensor, lattice: Tensor, cond: Tensor, eps: Tensor) -> Tensor:
        """Per-example negative ELBO (nats).

        Shapes:
            species (n, S), angles (n, S, 3), lattice (n, 6), cond (n, 3), eps (n, latent_dim) -> (n,).
        """
        mu, logvar = self.encode(species, angles, lattice, cond)
        z = mu + eps * (0.5 * logvar).exp()
        hidden = self._hidden(z, cond)
        logits = self.species_logits(hidden, species)
        nll_species = nn.functional.cross_entropy(logits.transpose(1, 2), species, reduction="none").sum(1)
        p = self.geometry(hidden, species)
        kappa = p["log_kappa"].exp()
        # von Mises: −κ cos(θ − μ) + log(2π I0(κ)); log I0(κ) = log i0e(κ) + κ (stable)
        log_i0 = torch.log(torch.special.i0e(kappa)) + kappa
        nll_angles = (-kappa * torch.cos(angles - p["mean_angle"]) + log_i0 + math.log(2 * math.pi)).sum((1, 2))
        std = p["lattice_logstd"].exp()
        nll_lattice = (
            0.5 * ((lattice - p["lattice_mean"]) / std) ** 2 + p["lattice_logstd"] + 0.5 * math.log(2 * math.pi)
        ).sum(1)
        mu_p, logvar_p = self.prior_params(cond)
        kl = 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p) ** 2) / logvar_p.exp() - 1.0).sum(1)
        return nll_species + nll_angles + nll_lattice + self.config.beta * kl

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        generator: torch.Generator,
        element_mask: Tensor | None = None,
        temperature: float = 1.0,
        geometry_noise: float = 0.0,
        z: Tensor | None = None,
        guidance: float = 0.0,
        guide: CrystalCVAE | None = None,
    ) -> dict[str, Tensor]:
        """Draw cells for the conditions ``cond`` (one per row).

        Args:
            cond: conditions.
            generator: the only source of randomness.
            element_mask: (S, V) or (V,) bool; False forbids that element (at that site).
            temperature: softmax temperature for species.
            geometry_noise: 0 decodes the mean geometry given z and species; 1 samples the likelihood
                (von Mises approximated by a wrapped normal of variance 1/κ).
            z: latent codes to decode (default: drawn from the conditional prior).
            guidance: classifier-free guidance weight w on the species logits,
                ``l = l_c + w (l_c − l_null)`` (Ho & Salimans 2022); 0 = plain conditioning.
            guide: the model whose ``l_c − l_null`` gives the guidance direction (default: this one).
                A family-adapted copy passes the meta-initialisation here: adaptation on unlabelled
                examples moves ``l_null`` as much as ``l_c``, so self-guidance would cancel it.

        Returns:
            ``species`` (n, S) int64, ``frac`` (n, S, 3) in [0, 1), ``lattice`` (n, 6) as
            (a, b, c, α, β, γ) in Å and degrees, and ``z`` (n, latent_dim).
        """
        n, s = cond.shape[0], self.config.n_sites
        if z is None:
            mu_p, logvar_p = self.prior_params(cond)
            z = mu_p + (0.5 * logvar_p).exp() * torch.randn(n, self.config.latent_dim, generator=generator)
        hidden = self._hidden(z, cond)
        director = self if guide is None else guide
        guide_hidden = director._hidden(z, cond) if guidance else None
        null_hidden = director._hidden(z, torch.zeros_like(cond)) if guidance else None
        species = torch.zeros(n, s, dtype=torch.int64)
        for site in range(s):
            logits = self.species_logits(hidden, species)[:, site]
            if guide_hidden is not None and null_hidden is not None:
                direction = director.species_logits(guide_hidden, species) - director.species_logits(
                    null_hidden, species
                )
                logits = logits + guidance * direction[:, site]
            logits = logits / max(temperature, 1e-6)
            if element_mask is not None:
                allowed = element_mask[site] if element_mask.dim() == 2 else element_mask
                logits = logits.masked_fill(~allowed, float("-inf"))
            species[:, site] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        p = self.geometry(hidden, species)
        angle = p["mean_angle"]
        lat = p["lattice_mean"]
        if geometry_noise > 0:
            kappa = p["log_kappa"].exp()
            angle = angle + geometry_noise * torch.randn(angle.shape, generator=generator) / kappa.sqrt()
            lat = lat + geometry_noise * torch.randn(lat.shape, generator=generator) * p["lattice_logstd"].exp()
        frac = torch.remainder(angle / (2 * math.pi), 1.0)
        lattice = torch.cat([lat[:, :3].exp(), lat[:, 3:] * 90.0], dim=1)
        return {"species": species, "frac": frac, "lattice": lattice, "z": z}
