/* Fuzz target: the SMTP engine (core/smtp_session.c) fed arbitrary client
 * bytes in arbitrary chunks, with every request answered (STARTTLS done,
 * AUTH outcomes and commit results chosen by the input). Invariants: every
 * reply line is "DDD" + ' ' or '-' + text + CRLF with a 2xx..5xx code, and
 * a commit request's body never holds a lone CR or LF. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/smtp_session.h"

static time_t fuzz_clock(void)
{
    return 1700000000;
}

static void fuzz_check_output(struct smtp_session *s)
{
    size_t len;
    const uint8_t *out = smtp_session_output(s, &len);
    size_t i = 0;
    while (i < len) {
        const uint8_t *eol = memchr(out + i, '\n', len - i);
        if (eol == NULL || eol == out + i || eol[-1] != '\r')
            abort();
        size_t n = (size_t)(eol - (out + i)) + 1;
        if (n < 6 || out[i] < '2' || out[i] > '5' || (out[i + 3] != ' ' && out[i + 3] != '-'))
            abort();
        i += n;
    }
    smtp_session_output_consume(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct smtp_session_params p = {
        .session_id = "fz", .hostname = "mx.test", .client_ip = "192.0.2.1",
        .listener_name = "fuzz", .mode = size > 0 && (data[0] & 1) ? LISTENER_STARTTLS
                                                                    : LISTENER_IMPLICIT,
        .bare_lf = size > 0 && (data[0] & 2) ? BARE_LF_REJECT : BARE_LF_NORMALIZE,
        .max_message_size = 4096, .max_recipients = 5, .max_line_length = 512,
        .max_errors = 20, .clock = fuzz_clock,
    };
    struct smtp_session *s = smtp_session_new(&p);
    if (s == NULL)
        return 0;
    if (p.mode == LISTENER_IMPLICIT)
        smtp_session_tls_started(s, "TLS1.3", "TLS_AES_128_GCM_SHA256");
    size_t off = size > 0 ? 1 : 0;
    unsigned step = 0;
    while (off < size) {
        /* chunk sizes vary with the data so boundaries land everywhere */
        size_t chunk = 1 + (data[off] % 61);
        if (chunk > size - off)
            chunk = size - off;
        if (smtp_session_input(s, data + off, chunk) < 0)
            break;
        off += chunk;
        for (int guard = 0; guard < 1000; guard++) {
            enum session_request r = smtp_session_run(s);
            fuzz_check_output(s);
            if (r == SESSION_REQ_NONE || r == SESSION_REQ_CLOSE)
                break;
            step++;
            if (r == SESSION_REQ_STARTTLS) {
                smtp_session_tls_started(s, "TLS1.3", "TLS_AES_128_GCM_SHA256");
            } else if (r == SESSION_REQ_AUTH) {
                struct smtp_session_auth_args a;
                smtp_session_auth_args(s, &a);
                struct auth_outcome o = {.result = (enum auth_result)(step % 7)};
                strcpy(o.user, "fuzzer");
                strcpy(o.challenge, "VXNlcm5hbWU6");
                smtp_session_auth_done(s, &o);
            } else if (r == SESSION_REQ_COMMIT) {
                struct queue_commit_req *req = smtp_session_commit_req(s);
                for (size_t i = 0; i < req->body_len; i++) {
                    if (req->body[i] == '\n' && (i == 0 || req->body[i - 1] != '\r'))
                        abort();
                    if (req->body[i] == '\r' && (i + 1 == req->body_len || req->body[i + 1] != '\n'))
                        abort();
                }
                smtp_session_commit_done(s, step % 5 == 0 ? QUEUE_ERR_STORAGE : QUEUE_OK);
            }
        }
        if (smtp_session_state(s) == SESSION_STATE_CLOSING)
            break;
    }
    smtp_session_free(s);
    return 0;
}
