"""`stackvisor top`: the running stack in a terminal, live, built on Textual (the `tui` extra).

board (what the screen shows, from the status document and the events; pure), feed
(HTTP over the stack's unix socket in the event loop: questions, actions, streams), app
(the Textual application: the table, the log pane, the keys), pageserver (`stackvisor ui`
run beside it on request). Nothing below this package imports it, and only `app`
imports Textual, so the rest of stackvisor works without the extra.
"""
