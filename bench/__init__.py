"""Speed and hardware-use measurements of mmassist (issue 8): run ``python -m bench``.

One module per measurement (``video``, ``finetune``, ``generate``, ``scaling``, ``flops``, ``serve``, ``tasks``), each with
``run(quick=False) -> common.Section``; ``gpu_check`` runs them on a GPU with bf16. Results and how
to read them: ``bench/README.md``.
"""

# The headline figures every run reports (``python -m bench --json``), and the targets of issue 8.
KEYS = (
    "video_sampling_speedup_vs_pyav_decode_all",
    "video_sampling_speedup_vs_pyav_seek",
    "finetune_speedup_vs_llava",
    "feature_cache_speedup",
    "generate_overhead_vs_hf",
    "resampler_step_time_ratio_64_vs_8",
    "mlp_step_time_ratio_64_vs_8",
    "train_flops_fraction_of_matmul_peak",
    "serve_throughput_8_vs_1",
    "ner_f1_minus_plain_transformers",
    "ner_cpu_time_vs_plain_transformers",
    "sentiment_cpu_time_vs_plain_transformers",
    "sentiment_accuracy_minus_plain_transformers",
)
TARGETS = (  # (key, comparison, bound)
    ("video_sampling_speedup_vs_pyav_decode_all", ">=", 3.0),
    ("video_sampling_speedup_vs_pyav_seek", ">=", 1.0),
    ("finetune_speedup_vs_llava", ">=", 1.5),
    ("feature_cache_speedup", ">=", 2.0),
    ("generate_overhead_vs_hf", "<=", 1.05),
    ("resampler_step_time_ratio_64_vs_8", "<=", 2.5),
    ("train_flops_fraction_of_matmul_peak", ">=", 0.35),
    ("serve_throughput_8_vs_1", ">=", 2.5),
    ("ner_f1_minus_plain_transformers", ">=", 0.0),
    ("sentiment_cpu_time_vs_plain_transformers", "<=", 1.1),
)
