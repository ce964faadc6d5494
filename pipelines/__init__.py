"""Declarative pipelines that reproduce the paper's mixing-set ablations (``mixset run``).

- ``mixing-sets.toml`` (Table 4) and ``mixing-strategies.toml`` (Table 5): the bundled pipelines;
- :mod:`pipelines.spec`: the pipeline file format, profiles, variants and options;
- :mod:`pipelines.runner`: the plan (a DAG of content-hashed stages) and its execution;
- :mod:`pipelines.stages`: what each stage does through the library (and the torchrun command);
- :mod:`pipelines.ablation_report`: ``results.{json,md,png}``, ours beside the paper's numbers;
- :mod:`pipelines.synthetic_data`: the smoke profile's tiny CIFAR-100-format datasets.

Nothing heavy is imported here.
"""
