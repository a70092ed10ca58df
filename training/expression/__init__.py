"""The expression recipe (``expression.onnx`` + ``expression_prototypes.npy``, models/EXPRESSION.md):

    data      training/prepare_faces.py -> runs/cache/ferplus_*.npz; expression/data.py (splits, majority labels)
    model     expression/model.py (residual CNN -> embedding of norm s -> classifier; mirror averaging)
    train     expression/train.py (soft CE + triplet loss with statistical screening, expression/screening.py);
              the served options: expression/configs/served.toml
    export    expression/export.py (temperature, prototypes, ONNX; --install), expression/prior.py (class priors)
    evaluate  expression/evaluate.py (the installed model through the service's code path)

Measured and not shipped: experiments/ (ablation table, fusions) and the card's lab notebook.
"""
