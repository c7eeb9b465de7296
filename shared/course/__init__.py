"""Instructor and maintainer tooling (learners never need to import these).

==================================  ==========================================================
``shared.course.grade``             the autograder: ``python -m shared.grade SUBMISSION...``
``shared.course.harness``           the grader's sandboxed check phase
``shared.course.exercises``         generates learner copies from solutions: ``python -m shared.exercises``
``shared.course.notebooks``         run/clean notebooks, setup cell, README table: ``python -m shared.notebooks``
``shared.course.pytest_plugin``     the test-suite set-up (``-p shared.pytest_plugin``)
==================================  ==========================================================

The old paths (``shared.grade``, ``shared.exercises``, ``shared.notebooks``,
``shared.pytest_plugin``) are kept as thin aliases of these modules.
"""
