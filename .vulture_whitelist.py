"""Names vulture (make lint's dead-code check) cannot see being used: Hydra `_target_`s named only
in yaml, Lightning and pydantic hooks called by the frameworks, keyword arguments read through
locals(). Each line is a use, so vulture counts the name as used."""

# pydantic model settings and fields validated from config dicts
_.model_config
_.reward_queries
_._exists
_._init  # flowrl.config.schema validators (pydantic calls them)
_._no_lora
_._world
_._device
_._multiple_of_16
_._adapter_dir
_.min_std
_.max_std
_.budget_fractions  # val.budget_fractions: read as cfg.val (flowrl.training.loop.make_trainer), a field so that ValSchema and ValConfig accept it
# Hydra targets (src/flowrl/config/conf/**.yaml)
_.fsdp_strategy
_.warmup_cosine
# Lightning hooks and attributes
_.automatic_optimization
_.on_fit_start
_.configure_optimizers
_.validation_step
_.on_train_batch_start
_.on_train_batch_end
_.should_stop
outputs
# model loaders: options passed on through locals() (flowrl.models.diffusers_base)
text_encoders_offload
# tests: classes named by string (Hydra targets, step-scheduler class paths) and pytest's module marker
FailingReward
NaNReward
KnobbedStepScheduler
OtherStepScheduler
PlainStepScheduler
# step schedulers named only by their yaml's _target_ (the forward-process variants' classes)
AdvantageWeightedStepScheduler
NegativeAwareStepScheduler
pytestmark
# Lightning hooks flowrl replaces or overrides (flowrl.training.run_control.own_signals, console.progress_bar)
_.register_signal_handlers
_.teardown
_.configure_columns
_.get_metrics
_.validation_description
