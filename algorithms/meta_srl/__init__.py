"""Meta-SRL (Khattar et al., arXiv 2405.16601) in the tabular online setting: within-task CRPO on softmax
policies (`tabular_crpo`), the meta-learner `online_dualdice` and the online baselines (`baselines`), all
behind the `OnlineLearner` contract (`base`) that `safemeta.online.protocol` runs task after task."""
