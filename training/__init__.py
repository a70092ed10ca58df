"""How the served models were made: one recipe per model, data -> model -> train -> export -> evaluate.

    training/expression/   expression.onnx (+ prototypes, priors)
    training/au/           au_detector.onnx, au_fusion.onnx
    training/occlusion/    occlusion.onnx, occlusion_ensemble.onnx
    training/*.py          what they share: data.py (datasets, face caches), prepare_faces.py (the service's face
                           stage over the datasets), metrics.py, fitting.py, common.py (logging, errors, --config,
                           installing), torch_utils.py; and the cross-model evaluators (evaluate_transfer,
                           evaluate_reference, fit_reference, evaluate_identity, calibrate_pose)

Run everything as a module from the repository root (``python -m training.au.train ...``). Installing into
models/ is always opt-in (``--install``, or ``--write-manifest`` for an evaluator's numbers). Experiments that
were measured and not shipped live in experiments/.
"""
