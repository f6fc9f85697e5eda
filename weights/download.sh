#!/usr/bin/env bash
# Fetch the real model files into weights/ (run on a machine that can reach Hugging Face).
#   weights/download.sh all          everything the full render needs (~80 GB)
#   weights/download.sh wan|multitalk|wav2vec|kokoro|lora
# Needs huggingface-cli (pip install "huggingface_hub[cli]"). Safe to re-run: finished files are skipped.
set -euo pipefail
W="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v huggingface-cli >/dev/null || { echo "huggingface-cli not found: pip install 'huggingface_hub[cli]'" >&2; exit 2; }

wan()       { huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P --local-dir "$W/Wan2.1-I2V-14B-480P"; }
multitalk() {
  huggingface-cli download MeiGen-AI/MeiGen-MultiTalk --local-dir "$W/MeiGen-MultiTalk"
  # The daemon reads multitalk.safetensors beside the Wan shards (with either index file);
  # a link keeps the 9.9 GB file in one place.
  ln -sf ../MeiGen-MultiTalk/multitalk.safetensors "$W/Wan2.1-I2V-14B-480P/multitalk.safetensors"
}
wav2vec()   {
  huggingface-cli download TencentGameMate/chinese-wav2vec2-base --local-dir "$W/chinese-wav2vec2-base"
  # model.safetensors exists only on this revision of the repo
  huggingface-cli download TencentGameMate/chinese-wav2vec2-base model.safetensors --revision refs/pr/1 \
    --local-dir "$W/chinese-wav2vec2-base"
}
kokoro()    { huggingface-cli download hexgrad/Kokoro-82M --local-dir "$W/Kokoro-82M"; }
lora()      {
  mkdir -p "$W/loras"
  huggingface-cli download vrgamedevgirl84/Wan14BT2VFusioniX FusionX_LoRa/Wan2.1_I2V_14B_FusionX_LoRA.safetensors --local-dir "$W/loras"
  huggingface-cli download Kijai/WanVideo_comfy Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors --local-dir "$W/loras"
}

case "${1:-all}" in
  all) wan; multitalk; wav2vec; kokoro ;;
  wan|multitalk|wav2vec|kokoro|lora) "$1" ;;
  *) echo "usage: $0 [all|wan|multitalk|wav2vec|kokoro|lora]" >&2; exit 2 ;;
esac
echo "done: $W"
