"""MAE-Lite pre-training of ViT-Tiny (12 heads; decoder 96 wide, 1 block), optionally D-MAE.

    python train.py --config configs/mae_lite_tiny.py --workdir runs/mae_lite_tiny
    python train.py --config configs/mae_lite_tiny.py:dmae --workdir runs/dmae_lite_tiny \
        --config.teacher.init_from=runs/mae_vit_base          # D-MAE-Lite, MAE-Base teacher

On the embedded digits, in minutes on a CPU:

    python train.py --config configs/mae_lite_tiny.py:demo --workdir runs/mae_demo
    # D-MAE: first a teacher (a wider MAE), then the student distilled from it
    python train.py --config configs/mae_lite_tiny.py:teacher_demo --workdir runs/mae_teacher
    python train.py --config configs/mae_lite_tiny.py:dmae_demo --workdir runs/dmae_demo \
        --config.teacher.init_from=runs/mae_teacher
    # fine-tune the pre-trained encoder (same architecture as the demo encoder)
    python train.py --config configs/vit_tiny.py:demo --workdir runs/mae_demo_ft \
        --config.init_from=runs/mae_demo --config.model.patch_size=4 \
        --config.model.num_heads=6 --config.total_steps=300

Distillation options: `teacher.kind` ('attention': D-MAE pre-softmax attention logits at
`teacher.pairs` (student layer, teacher layer), 1-based; 'g2sd': the teacher's decoder features
at `teacher.decoder_layer`), `teacher.alpha`, `teacher.hidden_alpha` (block outputs through a
bias-free adapter; 0 = off). Decoder size: `--config.model.decoder_width=128
--config.model.decoder_depth=4 --config.model.decoder_num_heads=4` (G2SD's).
"""

from repvit_jax.train import mae


def get_config(arg: str = ''):
  return mae.recipe('mae_vit_tiny', arg)
