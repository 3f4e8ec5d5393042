/* control.h — the daemon's control socket: a Unix stream socket on which
 * smarthostctl sends one command line ("wake") and reads one reply line
 * ("ok …" or "error …"). Admin actions change the database themselves; the
 * socket only tells the running daemon to look again at once. Served by its
 * own small thread (poll), never by a loop that carries mail. */
#ifndef SMARTHOST_CONTROL_H
#define SMARTHOST_CONTROL_H

#include <stddef.h>

#define CONTROL_LINE_MAX 512     /* a command */
#define CONTROL_REPLY_MAX 65536  /* a reply (one line, e.g. a JSON list) */

/* Runs on the control thread: write one reply line (no newline) into reply. */
typedef void (*control_handler)(const char *command, char *reply, size_t reply_size, void *arg);

struct control;

/* Bind path (replacing a stale socket file, never a live one), mode 0660, and
 * start serving. Returns 0, or a negative errno with a sentence in err. */
int control_start(const char *path, control_handler handler, void *arg, struct control **out,
                  char *err, size_t err_size);
/* Stop the thread, close and unlink the socket. NULL-safe. */
void control_stop(struct control *c);

/* Client side: send command, read the reply line into reply. Returns 0, or a
 * negative errno (-ENOENT / -ECONNREFUSED: no daemon listening). */
int control_request(const char *path, const char *command, char *reply, size_t reply_size,
                    unsigned timeout_ms);

#endif
