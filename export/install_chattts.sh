#!/usr/bin/env bash
# Install the `chattts` package (export/ and tests only; the service never imports it)
# next to an existing torch (2.13 CPU) without letting pip replace torch.
#
# chattts and vocos require torchaudio, and no torchaudio matches torch 2.13 CPU: the
# newest (2.11.0) is a CUDA build whose extension fails to import. Its pure-Python part
# is enough for ChatTTS' text -> speech path, so install it without deps and delete its
# native libraries: torchaudio then skips the extension.
# Usage: export/install_chattts.sh [path/to/pip]   (default: .venv/bin/pip)
set -euo pipefail
PIP="${1:-.venv/bin/pip}"
"$PIP" install --no-deps chattts==0.2.5 vocos==0.1.0 encodec==0.1.1 torchaudio==2.11.0 \
    vector_quantize_pytorch==1.32.0 torch-einops-utils==0.2.0
"$PIP" install einops einx loguru pybase16384 numba tqdm pyyaml huggingface_hub scipy requests
SITE="$("$(dirname "$PIP")/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE"/torchaudio/lib/*.so
"$(dirname "$PIP")/python" -c "import ChatTTS, vocos; print('chattts ok')"
