//! A configuration small enough for tests: the same pipeline, a smaller model and fewer steps.

use rlhf_pipeline::PipelineConfig;

pub fn small_config(seed: u64) -> PipelineConfig {
    let mut c = PipelineConfig { seed, ..Default::default() };
    c.model.hidden_size = 64;
    c.model.num_hidden_layers = 2;
    c.model.intermediate_size = 172;
    c.world.sft_responses_per_prompt = 4;
    c.sft.epochs = 12;
    c.collect.rounds = Some(3);
    c.reward_model.epochs = 2;
    c.ppo.steps = 20;
    c.ppo.prompts_per_step = 48;
    c.ppo.eval_every = 5;
    c.ppo.eval_samples_per_prompt = 1;
    c.ppo.algorithm.learning_rate = 1e-4;
    c
}
