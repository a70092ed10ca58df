"""The occlusion recipe (``occlusion.onnx`` 2.0.0 and the optional ``occlusion_ensemble.onnx`` 2.1.0,
models/OCCLUSION.md):

    data      training/prepare_faces.py -> runs/cache; occlusion/occluders.py (synthetic occluders and labels),
              occlusion/data.py (hard negatives, scoring through the serving class)
    model     occlusion/model.py (64x64 grey CNN, export with a sigmoid)
    train     occlusion/train.py (the served options: occlusion/configs/), occlusion/thresholds.py (the rule)
    export    occlusion/train.py (ONNX + manifest entry; --install), occlusion/ensemble.py (mean of seeds)
    evaluate  occlusion/evaluate.py (FER+ / CK+ / synthetic / real checks), occlusion/video.py (real hands)
"""
