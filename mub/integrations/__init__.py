"""MUB inside other evaluation harnesses: inspect_ai (``inspect_tasks``) and lmms-eval (``lmms_eval/``).

Each sits on top of mub's protocol, parser and metric; nothing of mub's core imports it.
"""
