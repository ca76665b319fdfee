/* SPDX-License-Identifier: MIT */
#pragma once

/* polkit's text agent on the terminal, as systemctl and busctl start it: when
 * a call may need authorization and the user could type a password (stdin is
 * a terminal, --no-ask-password was not given, mpoold is on this host, and we
 * are not root, whom polkit never asks), pkttyagent is started and we wait
 * until it has registered with polkit, so that polkit can ask through it. */

/* Starts the agent if it is wanted, needed and installed. Returns 1 if one
 * runs now, 0 if none is needed (or pkttyagent is not installed), or a
 * negative errno after a warning: the call then goes on without an agent.
 * The agent is stopped at exit, or by polkit_agent_close(); it dies with us
 * should we be killed. */
int polkit_agent_open(void);

/* Stops the agent, if one runs, and waits for it. */
void polkit_agent_close(void);
