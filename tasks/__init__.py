"""seqio task and mixture registrations (importing this package registers them).

The task library (SuperGLUE, GLUE, transfer and recycling tasks, tasks from
local files) is tracked as its own issue; nothing is registered yet.
"""
