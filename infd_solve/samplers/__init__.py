"""Samplers: the search. Each family is one function over a :class:`Problem` (a denoiser and a measurement
objective), k-diffusion style, found by name through a registry (:func:`register_sampler`), so a new family
is one file and no edit elsewhere. Built in: ``dps``, ``mpgd``, ``daps``, ``resample``; installed packages
add theirs under the entry-point group ``infd_solve.samplers``.

``ddim`` holds the arithmetic they share (timestep respacing, per-sample noise, the DDIM update, unguided
sampling); ``refine`` the optimization of the final latent that the solver runs after any of them.
"""

from . import daps, dps, mpgd, resample  # noqa: F401  (each registers its family)
from .base import SAMPLERS, Problem, Sampler, get_sampler, register_sampler
from .ddim import ddim_timesteps, initial_noise, sample_ddim
from .refine import refine_latent

__all__ = ["Problem", "Sampler", "SAMPLERS", "register_sampler", "get_sampler", "ddim_timesteps", "initial_noise",
           "sample_ddim", "refine_latent"]
