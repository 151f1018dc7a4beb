"""The reward model at work: align a policy with it through TRL, judge the policies (`python -m mars.align`)."""
