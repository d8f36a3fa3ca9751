"""Tasks by name: `get_task("landmarks")`, `task_of(cfg)`. Importing this package registers the built-in
landmarks, classification and distribution tasks; a new task is one module with a registered `Task`."""

from studykit.tasks import classification, distribution, landmarks  # noqa: F401  (registration)
from studykit.tasks.base import TASKS, Task, get_task, register_task, task_of

__all__ = ["TASKS", "Task", "get_task", "register_task", "task_of"]
