"""The trainer process: env contract -> join, pull, train locally, push (issue: aggregator and trainer)."""
