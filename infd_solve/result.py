"""What a solve returns: the latent and field, rendered with the data-consistency corrections, scored, saved
and plotted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .consistency import Correction, apply_all
from .constraints.base import Constraint
from .io import check_output, save_image, write_png
from .metrics import psnr
from .models.infd import INFDModel
from .rendering import FULL_CANVAS, check_box, check_size


@dataclass
class Result:
    """What :meth:`Solver.solve` returns.

    ``latent`` (B x C x h x w) and ``field`` (decoded, B x C' x H' x W'); ``history``: ``loss`` (constraint name
    -> per-step list of per-sample losses), ``timesteps``, ``step_seconds``, ``skipped`` (per step, the samples
    whose guidance was dropped because a loss or gradient was not finite); the first ``sampling_steps``
    entries are the sampler's, the rest the refinement's (``phase`` says which). ``corrections``: the
    data-consistency corrections of the observations (:mod:`infd_solve.consistency`), applied to every render.
    ``sampled_latent``: the sampler's latent, before the refinement.
    """

    model: INFDModel
    latent: torch.Tensor
    field: torch.Tensor
    constraints: list[Constraint]
    history: dict = field(default_factory=dict)
    corrections: list[Correction] = field(default_factory=list)
    sampled_latent: torch.Tensor | None = None

    def render(self, size, box=FULL_CANVAS, tile: int = 256, corrected: bool = True) -> torch.Tensor:
        """Render ``box`` at ``size`` in tiles (bounded memory), with the data-consistency corrections unless
        ``corrected=False`` (the model's own render)."""
        box, size = check_box(box), check_size(size)
        with torch.no_grad():
            out = self.model.render_image(self.field, size, tile=tile, box=box)
        return apply_all(self.corrections, out, box) if corrected else out

    def save(self, path: str | Path, size, tile: int = 256, progress: bool = False) -> list[Path]:
        """Write the canvas at ``size`` to ``path`` (atomically; a batch writes ``stem_0.png``, ``stem_1.png``,
        ...). A PNG is rendered and compressed one band of tiles at a time, so memory does not grow with the
        canvas; other formats are rendered whole first. The path is checked before any rendering."""
        path, size = check_output(path), check_size(size)
        paths = [path] if len(self.field) == 1 else \
            [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(self.field))]
        for k, out in enumerate(paths):
            field, corrections = self.field[k : k + 1], [c.sample(k) for c in self.corrections]

            def correct(pixels, region):
                return apply_all(corrections, pixels, region)

            if out.suffix.lower() == ".png":
                bands = self.model.render_bands(field, size, tile=tile, progress=progress, uint8=True, correct=correct)
                write_png(out, *size, (band[0].numpy() for _, band in bands))
            else:
                image = self.model.render_image(field, size, tile=tile, progress=progress, correct=correct)
                save_image(image[0], out)
        return paths

    def report(self) -> "Report":
        """``{constraint name: {measure: per-sample values}}`` on the result (printable as a table): each
        constraint's box rendered at its size and scored by :meth:`Constraint.score` (loss, and e.g. PSNR
        against an observation or CLIP similarity); a corrected observation adds ``model_fit`` (PSNR in dB of
        how well the model alone explained it, noise excluded) and ``trust`` (the share of the model's render kept); a
        solved result adds ``guided``: 1 if the constraint guided that sample at some step, else 0 (see
        :meth:`never_guided`)."""
        out, unguided = Report(), self.never_guided() if "loss" in self.history else None
        corrections = {c.name: c for c in self.corrections}
        for c in self.constraints:
            scores = c.score(self.render(c.score_size, c.box))
            out[c.name] = {k: v.double().cpu().tolist() for k, v in scores.items()}
            if c.name in corrections:
                fix = corrections[c.name]
                out[c.name] |= {"model_fit": fix.fit_db.double().cpu().tolist(),
                                "trust": fix.gain.double().cpu().tolist()}
            if unguided is not None:
                skipped = unguided.get(c.name, ())
                out[c.name]["guided"] = [float(i not in skipped) for i in range(len(self.field))]
        return out

    def notes(self) -> list[str]:
        """Plain lines for the user, e.g. when the model could not explain an observation and the result fell
        back towards the classical answer."""
        batch = len(self.field)
        return [note if batch == 1 else f"sample {i}: {note}"
                for c in self.corrections for i, note in enumerate(c.notes) if note]

    def never_guided(self) -> dict[str, list[int]]:
        """Per constraint, the samples it never guided: at no sampling step was it active with a finite loss
        while that sample's guidance was applied (an infinite weight or a bad observation skips every step)."""
        out = {}
        steps = self.history.get("sampling_steps", len(self.history["timesteps"]))
        batch = len(self.latent)
        for name, values in self.history["loss"].items():
            guided = torch.zeros(batch, dtype=torch.bool)
            for loss, skipped in zip(values[:steps], self.history["skipped"][:steps]):
                if loss is not None:
                    step = torch.isfinite(loss).expand(batch).clone()
                    step[skipped] = False
                    guided |= step
            out[name] = (~guided).nonzero().flatten().tolist()
        return out

    def constraint_gaps(self) -> dict[str, torch.Tensor]:
        """PSNR (dB, per sample) between what each constraint saw (its box rendered alone) and the same pixels
        of the whole canvas rendered on that constraint's pixel lattice (one exact tiled render).

        A local renderer (the default model's) gives ``inf``: the constraint saw exactly the final pixels. A
        renderer that normalizes over its grid (official checkpoints) gives a finite value: the gap.
        """
        gaps = {}
        with torch.no_grad():
            for c in self.constraints:
                left, top, right, bottom = c.box
                h, w = c.size
                canvas = (max(h, round(h / (bottom - top))), max(w, round(w / (right - left))))
                # snap the box to that lattice so both renders use the very same pixel centres
                r0, c0 = min(round(top * canvas[0]), canvas[0] - h), min(round(left * canvas[1]), canvas[1] - w)
                box = (c0 / canvas[1], r0 / canvas[0], (c0 + w) / canvas[1], (r0 + h) / canvas[0])
                alone = self.model.render(self.field, (h, w), box)
                whole = self.model.render_image(self.field, canvas)[..., r0 : r0 + h, c0 : c0 + w]
                gaps[c.name] = psnr(alone, whole)
        return gaps

    def plot_losses(self, path: str | Path) -> Path:
        """Loss per constraint over the steps, as a PNG (:func:`infd_solve.viz.plot_losses`)."""
        from .viz import plot_losses

        return plot_losses(self.history, path)


class Report(dict):
    """:meth:`Result.report`'s ``{constraint name: {measure: per-sample values}}``, printed as a table."""

    def __str__(self) -> str:
        rows = [(name, measure, "  ".join(f"{v:.4g}" for v in values))
                for name, measures in self.items() for measure, values in measures.items()]
        if not rows:
            return "(no constraints)"
        widths = [max(len(row[i]) for row in rows + [("constraint", "measure", "")]) for i in range(2)]
        lines = [f"{'constraint':<{widths[0]}}  {'measure':<{widths[1]}}  per sample"]
        lines += [f"{name:<{widths[0]}}  {measure:<{widths[1]}}  {values}" for name, measure, values in rows]
        return "\n".join(lines)
