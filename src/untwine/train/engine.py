"""The training engine's former home, kept as re-exports: the engine is now

    untwine.train.session     train(): validate, write, train, finish
    untwine.train.factory     config -> data, model, objective, controller, task (kinds register here)
    untwine.train.tasks       a task per kind of training (single-stage VAE, multi-stage)
    untwine.train.loop        batch, step, one backward of the summed losses, every optimiser steps
    untwine.train.callbacks   logs, progress, checkpoints, evaluation, time budget, signals
    untwine.train.state       step, weights, optimisers, sampler, RNG; finite and rank checks
    untwine.train.resume      validate a resume, the config history
    untwine.train.hardware    precision, threads, Fabric, channels-last, compile
"""
from untwine.train.factory import (build_controller_from, build_data, build_model, build_objective_from,  # noqa: F401
                                   build_vae_model)
from untwine.train.hardware import cpu_has_native_bf16, cpu_threads, resolve_precision  # noqa: F401
from untwine.train.progress import Clock as _Clock, Progress  # noqa: F401
from untwine.train.session import RUN_DIR_ENV, TrainingInterrupted, default_run_dir, train  # noqa: F401
from untwine.train.state import NonFiniteLossError, RankMismatchError, data_seed  # noqa: F401
from untwine.train.tasks.vae import TrainStep as _TrainStep  # noqa: F401
