"""Running a stage: loggers, checkpoint callbacks and the Lightning Trainer."""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from data import make_datamodule
from data.sources import kind_of
from model.checkpoint import checkpoint_step
from model.cli_config import checked_dict
from model.config import HIGHER_IS_BETTER, QUALITY_MONITORS, Config, TrainerConfig, write_json
from model.denoiser import NETWORKS, network_config
from model.errors import UserError
from model.lightning.checkpoint_io import AtomicCheckpointIO
from model.lightning.callbacks.image_grid import ImageGrid
from model.lightning.callbacks.graceful_stop import GracefulStop
from model.lightning.callbacks.progress import StepProgressBar
from model.lightning.callbacks.same_weights import SameWeightsOnEveryRank
from model.lightning.callbacks.continuous_logs import ContinuousLogs
from model.lightning.callbacks.rng_state import RNGState
from model.lightning.profile import stage_profiler, write_profile
from model.lightning.slurm import cluster_plugins, job_id, requeue
from model.run_folder import check_stage_folder

STAGES = ("vae", "denoiser")


def make_logger(tc: TrainerConfig, folder: Path, name: str, resume_step: Optional[int]):
    if tc.logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(str(folder), name="logs", version="")
    if tc.logger == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        return WandbLogger(project=tc.wandb_project, name=name, save_dir=str(folder), offline=tc.wandb_offline,
                           id=wandb_run_id(folder), resume="allow")
    if resume_step is not None:
        from model.compat import resumed_csv_logger

        return resumed_csv_logger(str(folder), resume_step, name="logs", version="")
    from pytorch_lightning.loggers import CSVLogger

    return CSVLogger(str(folder), name="logs", version="")


WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(folder: Path) -> str:
    """The W&B run id of this stage, kept in `<stage>/wandb_run_id.txt`: a resumed or requeued job continues the
    same W&B run instead of starting a new one. Written once, by the first start (rank zero)."""
    import secrets

    path = folder / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if getattr(rank_zero_only, "rank", 0) == 0:
        from model.writes import write_text

        write_text(path, run_id + "\n")
    return run_id


def make_callbacks(tc: TrainerConfig, folder: Path, monitor: str) -> list[pl.Callback]:
    ckpt_dir = folder / "checkpoints"
    by_quality = tc.best_by in QUALITY_MONITORS  # computed every fid_every_n_steps
    monitor = tc.best_by or monitor
    mode = "max" if monitor in HIGHER_IS_BETTER else "min"
    callbacks: list[pl.Callback] = [
        # step<N>.ckpt every N steps, and last.ckpt with it: what --load resumes from
        ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=tc.checkpoint_every_n_steps, save_top_k=-1, monitor=None,
                        save_last=True),
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                        enable_version_counter=False,
                        every_n_train_steps=tc.fid_every_n_steps if by_quality else None),
        LearningRateMonitor(logging_interval="step"),
    ]
    if tc.images_every_n_steps:
        callbacks.append(ImageGrid(folder / "images", tc.images_every_n_steps))
    if tc.progress_bar:
        callbacks.append(StepProgressBar(folder.name))
    return callbacks


def make_trainer(tc: TrainerConfig, folder: Path, monitor: str, logger,
                 extra_callbacks: list[pl.Callback], profiler=None) -> pl.Trainer:
    try:
        return build_trainer(tc, folder, monitor, logger, extra_callbacks, profiler)
    except (MisconfigurationException, ImportError, ValueError, TypeError, RuntimeError) as err:  # "gpu" on a CPU
        raise UserError(f"the trainer settings do not work on this machine ({str(err).splitlines()[0][:160]}); "
                        f"check trainer.accelerator, trainer.devices and trainer.strategy (\"auto\" fits any "
                        f"machine)") from err


def build_trainer(tc: TrainerConfig, folder: Path, monitor: str, logger,
                  extra_callbacks: list[pl.Callback], profiler=None) -> pl.Trainer:
    devices = tc.devices if not tc.devices.isdigit() else int(tc.devices)
    return pl.Trainer(
        max_steps=tc.max_steps,
        max_epochs=-1,
        precision=tc.precision,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=tc.gradient_clip_val,
        val_check_interval=tc.val_every_n_steps * tc.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=tc.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=tc.log_every_n_steps,
        logger=logger,
        callbacks=make_callbacks(tc, folder, monitor) + extra_callbacks,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
        default_root_dir=str(folder),
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,  # the stage's first line gives the parameter count
        accelerator=tc.accelerator,
        devices=devices,
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        deterministic=tc.deterministic,
        profiler=profiler,
    )


def check_one_batch(dm) -> None:
    """Training needs at least one full batch (a smaller set would train on a different batch size silently)."""
    n, batch = len(dm.train_set), dm.cfg.batch_size
    if n < batch:
        raise UserError(f"data set {dm.cfg.name} has {n} training items, fewer than one batch (batch size {batch}); "
                        f"lower data.batch_size (or the stage's trainer.batch_size) to at most {n}, or add data")


def check_quality_settings(stage: str, tc: TrainerConfig, monitor: str, data_name: str) -> None:
    """Quality during training draws samples: the denoiser stage of image data only; best_by names what is logged."""
    if tc.fid_every_n_steps and (stage == "vae" or kind_of(data_name) == "points"):
        raise UserError(f"{stage}.trainer.fid_every_n_steps needs a denoiser stage trained on images (data.name "
                        f"{data_name}); set it to 0, or under denoiser.trainer")
    if tc.best_by not in (None, monitor) and (stage == "vae" or tc.best_by in ("val/loss", "val/recon")):
        raise UserError(f"{stage}.trainer.best_by {tc.best_by} is not logged by this stage; use {monitor} or null")


MONITOR = {"vae": "val/recon", "denoiser": "val/loss"}  # what a stage's best.ckpt is chosen by unless best_by says


def stage_trainer(cfg: Config, stage: str) -> TrainerConfig:
    return cfg.vae.trainer if stage == "vae" else cfg.denoiser.trainer


def stage_data(cfg: Config, tc: TrainerConfig):
    """The stage's data module, set up, with its batch size, checked to hold one batch."""
    dm = make_datamodule(dataclasses.replace(cfg.data, batch_size=tc.batch_size or cfg.data.batch_size))
    dm.prepare_data()
    dm.setup("fit")
    check_one_batch(dm)
    return dm


def quality_callbacks(stage: str, cfg: Config) -> list[pl.Callback]:
    """Quality during training when trainer.fid_every_n_steps asks for it (its FID weights are checked here)."""
    tc = stage_trainer(cfg, stage)
    check_quality_settings(stage, tc, MONITOR[stage], cfg.data.name)
    if not tc.fid_every_n_steps:
        return []
    from model.lightning.callbacks.quality import QualityDuringTraining

    return [QualityDuringTraining(tc.fid_every_n_steps, tc.fid_num_samples, tc.fid_real_pool, tc.fid_features)]


def check_denoiser_stage(cfg: Config, vae_trained_first: bool) -> None:
    """What would refuse the denoiser stage, checked before stage 1 trains when one command trains both: its data and
    batch size, its classes, its quality settings. A refusal after stage 1 would cost the user that stage's time."""
    if vae_trained_first and kind_of(cfg.data.name) == "latents":
        raise UserError("data.name latents reads latents encoded by an existing VAE, but --train-vae trains a new "
                        "one; train the VAE alone, encode with model.scripts.encode_latents, then --train-denoiser")
    dm = stage_data(cfg, cfg.denoiser.trainer)
    check_classes(cfg, dm)
    quality_callbacks("denoiser", cfg)


def train_stage(stage: str, cfg: Config, folder: Path, load: Optional[str] = None,
                load_vae: Optional[str] = None) -> Path:
    """Train one stage into `folder/<stage>`; returns the path of its last checkpoint."""
    from model.lightning.systems.vae import VAESystem

    stage_dir = folder / stage
    check_stage_folder(stage_dir, resuming=load is not None)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    tc = stage_trainer(cfg, stage)
    dm = stage_data(cfg, tc)
    if stage == "vae":
        system = VAESystem(checked_dict(cfg))
    else:
        system = make_denoiser(cfg, dm, load, load_vae)
        if kind_of(cfg.data.name) == "latents":
            check_latents_fit(dm.meta, cfg, system, load or load_vae)
        elif cfg.denoiser.diffusion.cache_latents:
            from model.lightning.latent_cache import CachedLatents

            dm = CachedLatents(dm, system.encode_mean)
    monitor = MONITOR[stage]
    stop = GracefulStop()
    callbacks = [stop, RNGState(cfg.seed), SameWeightsOnEveryRank(), ContinuousLogs(), *quality_callbacks(stage, cfg)]
    logger = make_logger(tc, stage_dir, f"{cfg.name}-{folder.name}-{stage}", checkpoint_step(load) if load else None)
    profiler = stage_profiler(tc, stage_dir)
    trainer = make_trainer(tc, stage_dir, monitor, logger, callbacks, profiler)
    write_json(cfg, folder / "config.json")  # after the last check that can refuse the run: nothing written before
    if trainer.is_global_zero:
        print(describe_batch(stage, cfg, tc, trainer.world_size, system), flush=True)
    start = time.perf_counter()
    trainer.fit(system, datamodule=dm, ckpt_path=load, weights_only=True)
    last = stage_dir / "checkpoints" / "last.ckpt"
    # the final step, which need not fall on a checkpoint interval (full state, so it resumes)
    trainer.save_checkpoint(last, weights_only=False)
    interrupted = stop.interrupted(trainer.global_step, str(last), requeued=requeue_after(stop, trainer))
    if interrupted is not None:
        raise interrupted
    wall_s = time.perf_counter() - start
    if trainer.is_global_zero:
        if profiler is not None:
            write_profile(profiler, stage_dir, wall_s)
        print(f"{stage}: trained to step {trainer.global_step} in {wall_s:.0f} s")
    return last


def describe_batch(stage: str, cfg: Config, tc: TrainerConfig, world_size: int, system) -> str:
    """The stage's one opening line: its size, the global batch and what the learning rate applies to (the numbers a
    scaled-out run must keep in mind)."""
    per_device = tc.batch_size or cfg.data.batch_size
    lr = (cfg.vae.optim if stage == "vae" else cfg.denoiser.optim).lr
    trained = sum(p.numel() for p in system.parameters() if p.requires_grad)
    return (f"{stage}: {trained / 1e6:.2f} M trained parameters, {tc.max_steps} steps; global batch "
            f"{per_device * world_size * tc.accumulate_grad_batches} = {per_device} per process x {world_size} "
            f"process(es) x {tc.accumulate_grad_batches} accumulated; lr {lr:g} per optimiser step (not rescaled "
            f"with the batch)")


QUIET_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")


def release_process_group() -> None:
    """Destroy the DDP process group where training made one. Lightning leaves it to the interpreter's exit, where
    gloo's worker threads can be torn down while joinable and abort the process ("terminate called without an active
    exception", exit status -6) after a run that finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def quiet_frameworks() -> None:
    """A normal run prints the package's lines and the progress bar only: Lightning's start-up notes (devices, tips,
    model summary) and the framework warnings that say nothing about the run (deprecations inside Lightning, the
    eval-mode frozen VAE, a small data set's short epochs) are dropped; `--verbose` keeps them all."""
    import logging
    import warnings

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*(module\(s\) in eval mode|smaller than the logging interval|"
                                              r"does not have many workers|Tip:|LeafSpec|`srun` command is available).*")


def requeue_after(stop: GracefulStop, trainer: pl.Trainer) -> Optional[str]:
    """After SLURM's time-limit warning (SIGUSR1) inside a job: put the job back in the queue, once (rank zero)."""
    job = job_id()
    if stop.received != signal.SIGUSR1 or job is None:
        return None
    if threading.current_thread() is threading.main_thread():
        # `scontrol requeue` makes SLURM send SIGTERM to this job's tasks at once; last.ckpt is saved, so each task
        # ignores it and lives to print its stop message and exit (SLURM's SIGKILL follows only after KillWait)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return requeue(job) if trainer.is_global_zero else "rank zero requeues the SLURM job"


def check_latents_fit(meta: dict, cfg: Config, system, vae_path: Optional[str]) -> None:
    """Latents on disk must come from this VAE and from images of this config's size and channels."""
    from data.latents import check_vae
    from model.checkpoint import weights_digest

    if system.autoencoder is None:
        raise UserError("data.name latents needs denoiser.autoencoder 'vae' (the latents are decoded by it)")
    check_vae(meta, weights_digest(system.autoencoder), str(vae_path))
    images = meta["data"]
    if (images["image_size"], images["channels"]) != (cfg.data.image_size, cfg.data.channels):
        raise UserError(f"the latents were encoded from {images['image_size']} px images with {images['channels']} "
                        f"channel(s) but data.image_size is {cfg.data.image_size} and data.channels "
                        f"{cfg.data.channels}; set them to the encoded images' values")


def check_classes(cfg: Config, dm) -> None:
    wanted = network_config(cfg.denoiser).num_classes
    if wanted and wanted != dm.num_classes:
        field = NETWORKS[cfg.denoiser.network].config_field
        raise UserError(f"the denoiser is configured for {wanted} classes but the data has {dm.num_classes}; "
                        f"set denoiser.{field}.num_classes to {dm.num_classes} (or 0 for unconditional)")


def make_denoiser(cfg: Config, dm, load: Optional[str], load_vae: Optional[str]):
    from model.lightning.systems.denoiser import DenoiserSystem

    check_classes(cfg, dm)
    num_classes = dm.num_classes if network_config(cfg.denoiser).num_classes else 0
    system = DenoiserSystem(checked_dict(cfg), num_classes=num_classes)
    if cfg.denoiser.autoencoder != "vae":
        return system
    if load is not None:  # now, not when Lightning restores the rest: cached latents are encoded before that
        system.load_vae(load, kind="denoiser")
    elif load_vae is None:
        raise UserError("training the denoiser on latents needs a VAE: pass --load-vae <vae .ckpt>, add "
                        "--train-vae to train one first, or set denoiser.autoencoder 'none'")
    else:
        system.load_vae(load_vae)
    return system
