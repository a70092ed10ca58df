"""The AU recipe (``au_detector.onnx`` and the optional ``au_fusion.onnx``, models/AU_DETECTOR.md):

    data      training/prepare_faces.py -> runs/cache; au/data.py (CK+ boxes from the mesh, FER+ faces whose votes
              make AUs certain), au/regions.py (the AU box map), au/labels.py (drawn labels)
    model     au/model.py (the patent's conv + shortcut + YOLO-style AU layer, its loss)
    train     au/train.py (--pretrain on FER+, --cv subject folds, --final; the served options: au/configs/)
    export    au/train.py --final (ONNX), au/soup.py (weight soup of two runs: v2.1; --install)
    evaluate  au/evaluate.py (fold models through the service's decoding: thresholds, metrics),
              au/fuse.py (the detector + blendshapes fusion; --install), au/activation.py (blendshape activations)
"""
