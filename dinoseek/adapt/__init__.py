"""``dinoseek adapt``: DINOv2's self-distillation continued on the user's own images.

``augment`` draws the multi-crop views, ``data`` serves a batch per step from decode
processes, ``model`` builds the student and the EMA teacher, ``losses`` holds DINO, KoLeo
and iBOT, ``training`` runs, checkpoints and resumes, ``output`` writes the model directory
and ``compare`` measures the base model against the adapted one.
"""
