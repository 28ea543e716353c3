"""Tests of the training package: synthetic data and the evaluation judge."""
