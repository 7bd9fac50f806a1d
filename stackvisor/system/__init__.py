"""The operating system as stackvisor sees it: facts about processes, and signals.

`procfs` only reads (is this pid still that process, its ancestors, its process
group, who carries a marker); `signals` is the one gate every signal goes through,
with the never-signal rules in it. Forking and reaping children is
`runtime.process`; sockets and ports are `ports`.
"""
