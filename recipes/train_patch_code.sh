#!/usr/bin/env bash
# The patch-code candidate for the default model (pretrained/MODEL_CARD.md, "The patch code on a GPU"), trained
# in one time-boxed run, e.g. on a lent GPU:
#   1. the code: 32 principal components of 8x8 patches of the 128-px input, lapped (each patch reaches 4 px
#      into its neighbours, so a sampled latent's error does not draw the cells as blocks), half whitened;
#      fitted, then refined for REFINE steps (analysis and synthesis apart: a lower error and a fainter grid
#      of the cells; 0: the PCA as fitted); its renderer without the position-in-cell input (it draws lines at
#      the field's cells: model card);
#   2. at the same time, on the same latents: the renderer (L1 + perceptual + detail + adversarial, encoder
#      frozen) and the v-prediction denoiser, each stopped after MINUTES with a complete model;
#   3. the complete model: the denoiser's state written out (0 more steps) on the trained renderer. The code is
#      frozen, so this is the model that the chain code -> renderer -> denoiser gives.
#
#   bash recipes/train_patch_code.sh [OUT] [MINUTES]     # defaults: runs/patch_code, 6; OUT/model is the result
#   DEVICE=cpu SCENES=200 REFINE=50 bash recipes/train_patch_code.sh runs/try 0.5   # a quick try without a GPU
#   DENOISER_FLAGS="--model-channels 128" bash recipes/train_patch_code.sh   # more train_diffusion.py flags
set -euo pipefail
out=${1:-runs/patch_code}
minutes=${2:-6}
device=${DEVICE:-cuda}
scenes=${SCENES:-20000}
refine=${REFINE:-4000}
read -r -a extra <<< "${DENOISER_FLAGS:-}"
denoiser=(--prediction v_prediction --batch-size 64 --num-scenes "$scenes" --device "$device" "${extra[@]}")
recipes=$(dirname "$0")
mkdir -p "$out"

refining=()
[ "$refine" -gt 0 ] && refining=(--refine-code "$refine")
python "$recipes/train_autoencoder.py" --patch-code 32 --input-size 128 --latent 16 --whitening 0.5 --overlap 4 \
  "${refining[@]}" --padding reflect --coord-encoding none --steps 0 --workers 0 --device "$device" --out "$out/code"

python "$recipes/train_autoencoder.py" --init "$out/code/infd" --input-size 128 --latent 16 --freeze-encoder \
  --detail-weight 30 --gan-start 1000 --steps 100000 --workers 4 --device "$device" --time-limit "$minutes" \
  --out "$out/renderer" > "$out/renderer.log" 2>&1 &
renderer=$!
python "$recipes/train_diffusion.py" --autoencoder "$out/code/infd" "${denoiser[@]}" --steps 100000 \
  --save-every 2000 --workers 8 --time-limit "$minutes" --out "$out/denoiser" > "$out/denoiser.log" 2>&1 &
diffusion=$!
wait $renderer || { echo "renderer training failed: see $out/renderer.log" >&2; exit 1; }
wait $diffusion || { echo "denoiser training failed: see $out/denoiser.log" >&2; exit 1; }

mkdir -p "$out/model"
# hard links: the latents (1.3 GB) are only read, and a state save replaces its file atomically
ln -f "$out/denoiser/state.pt" "$out/denoiser/latents.pt" "$out/model/"
steps=$(python -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$out/model/state.pt")
python "$recipes/train_diffusion.py" --autoencoder "$out/renderer/infd" "${denoiser[@]}" --steps "$steps" --resume \
  --out "$out/model"
echo "the complete model: $out/model/infd (denoiser $steps steps)"
