"""course_lib: the finished, tested pieces of the course "Build a GPT from scratch".

Each module is derived step by step in one lesson (its docstring names the lesson); the lesson
then imports the module and checks both agree. Later lessons build on these modules.

    env         where things live, which device to use, seeding        (Lesson 00)
    data        the Shakespeare corpus: download, checks, splits, batches (Lesson 00)
    exercises   checkers for every lesson's exercises
    cli         the ``course-lib`` command
"""

__version__ = "0.1.0"
