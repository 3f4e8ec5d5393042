/* smtp_data.h — the DATA stream decoder, pure and fuzzed
 * (tests/fuzz/smtp_data.c). Feeds raw bytes as they arrive; finds the end of
 * data, which is <CRLF>.<CRLF> and nothing else; removes dot-stuffing
 * (RFC 5321 §4.5.2); normalises or refuses bare LF and bare CR so that no
 * <LF>.<LF>, <CR>.<CR> or similar sequence can end the data or smuggle a
 * second message here or at the next hop (CVE-2023-51764 class): the output
 * only ever holds CRLF line endings. Counts size while streaming and stops
 * storing (but keeps reading to the end) once max_size is passed.
 * Also notes, in the header section, whether Message-ID: / Date: / From: are
 * present (RFC 6409 §8 fix-ups). */
#ifndef SMARTHOST_SMTP_DATA_H
#define SMARTHOST_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Growable byte buffer with a hard cap; never grows past cap. */
struct smtp_buf {
    uint8_t *data;
    size_t len;
    size_t cap_alloc;
    size_t cap_max;
};
/* Append; returns 0, or -1 (nothing appended) when cap_max would be passed
 * or allocation fails. */
int smtp_buf_append(struct smtp_buf *b, const void *p, size_t n);
void smtp_buf_reset(struct smtp_buf *b); /* len = 0, keeps memory */
void smtp_buf_free(struct smtp_buf *b);  /* frees memory, zeroes the struct */

enum smtp_data_status {
    SMTP_DATA_MORE,  /* need more input */
    SMTP_DATA_DONE,  /* end of data seen; the bytes after it were not consumed */
};

struct smtp_data_decoder {
    /* configuration, set before the first feed */
    uint64_t max_size;       /* bytes of decoded content allowed */
    bool reject_bare_lf;     /* refuse instead of normalising */
    /* results (read after SMTP_DATA_DONE) */
    uint64_t size;           /* decoded bytes counted, even past max_size */
    bool is_oversize;        /* size passed max_size: 552 5.3.4 */
    bool has_bare_lf;        /* a bare LF or bare CR was seen */
    bool is_out_of_memory;   /* smtp_buf_append failed below max_size */
    bool has_message_id, has_date, has_from;
    uint32_t header_count;
    /* private state */
    int state;
    bool in_header;
    bool at_line_start;
    char hname[16];
    size_t hname_len;
    int hname_state;
};

/* Reset for a new message, keeping max_size / reject_bare_lf. */
void smtp_data_init(struct smtp_data_decoder *d, uint64_t max_size, bool reject_bare_lf);

/* Decode in[0..len). Appends decoded content to out unless oversize (or, with
 * reject_bare_lf, once a bare LF has been seen). *consumed receives how many
 * input bytes were used: all of them for SMTP_DATA_MORE, up to and including
 * the final "CRLF.CRLF" for SMTP_DATA_DONE (the rest belongs to the command
 * channel: pipelined commands after the message). */
enum smtp_data_status smtp_data_feed(struct smtp_data_decoder *d, const uint8_t *in, size_t len,
                                     size_t *consumed, struct smtp_buf *out);

#endif
