/* smtp_data.c — the DATA stream decoder and the capped growable buffer. Owns
 * the one definition of end of data: <CRLF>.<CRLF>, CRLF meaning a CR directly
 * followed by an LF, the first one possibly the CRLF that ended DATA. A bare CR
 * or LF is content, never an SMTP line start: it can neither end the data nor
 * hide a second message (CVE-2023-51764 class); the output holds CRLF pairs
 * only. Pure (no I/O, no logging), O(n) in the bytes fed, whatever the chunks. */
#include "core/smtp_data.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SMTP_BUF_MIN_ALLOC 256

int smtp_buf_append(struct smtp_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (p == NULL || b->len > b->cap_max || n > b->cap_max - b->len)
        return -1;
    size_t need = b->len + n;
    if (need > b->cap_alloc) {
        size_t cap = b->cap_alloc > 0 ? b->cap_alloc : SMTP_BUF_MIN_ALLOC;
        while (cap < need)
            cap = cap > b->cap_max / 2 ? b->cap_max : cap * 2;
        if (cap > b->cap_max)
            cap = b->cap_max;
        uint8_t *data = realloc(b->data, cap);
        if (data == NULL)
            return -1;
        b->data = data;
        b->cap_alloc = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void smtp_buf_reset(struct smtp_buf *b)
{
    b->len = 0;
}

void smtp_buf_free(struct smtp_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* Where the decoder stands in the client's byte stream. "Line start" means
 * after a real CRLF (or the CRLF that ended DATA): only there is a '.' special. */
enum data_state {
    DATA_STATE_LINE_START = 0, /* init relies on this being 0 */
    DATA_STATE_TEXT,           /* inside a line, or after a bare CR / bare LF */
    DATA_STATE_CR,             /* a CR was seen; the next byte decides what it was */
    DATA_STATE_DOT,            /* "." at line start: stuffing, or the terminator */
    DATA_STATE_DOT_CR,         /* ".<CR>" at line start */
    DATA_STATE_DONE,
};

/* Header scanner over the DECODED stream, which only holds CRLF pairs: the
 * header the next hop will see is what we store, so that is what is parsed. */
enum data_header_state {
    DATA_HEADER_LINE_START = 0,
    DATA_HEADER_NAME,  /* field-name bytes so far */
    DATA_HEADER_WSP,   /* obsolete WSP between name and ':' (RFC 5322 §4.5) */
    DATA_HEADER_VALUE, /* after ':', or in a continuation line */
};

void smtp_data_init(struct smtp_data_decoder *d, uint64_t max_size, bool reject_bare_lf)
{
    memset(d, 0, sizeof(*d));
    d->max_size = max_size;
    d->reject_bare_lf = reject_bare_lf;
    d->state = DATA_STATE_LINE_START;
    d->in_header = true;
    d->at_line_start = true;
    d->hname_state = DATA_HEADER_LINE_START;
}

static void data_header_end(struct smtp_data_decoder *d)
{
    d->in_header = false;
}

static void data_header_field(struct smtp_data_decoder *d)
{
    if (d->header_count < UINT32_MAX)
        d->header_count++;
    if (d->hname_len >= sizeof(d->hname))
        return; /* longer than any name we look for */
    if (d->hname_len == 10 && strncasecmp(d->hname, "Message-ID", 10) == 0)
        d->has_message_id = true;
    else if (d->hname_len == 4 && strncasecmp(d->hname, "Date", 4) == 0)
        d->has_date = true;
    else if (d->hname_len == 4 && strncasecmp(d->hname, "From", 4) == 0)
        d->has_from = true;
}

/* RFC 5322 §2.2: a field is name ":" value; a line starting with WSP
 * continues the previous field; the first empty line ends the section. A
 * line that is neither also ends it, as mail parsers treat it as body. */
static void data_header_byte(struct smtp_data_decoder *d, uint8_t c)
{
    if (c == '\r')
        return; /* always followed by '\n' in the decoded stream */
    switch (d->hname_state) {
    case DATA_HEADER_LINE_START:
        if (c == '\n') {
            data_header_end(d);
        } else if (c == ' ' || c == '\t') {
            if (d->header_count == 0)
                data_header_end(d); /* nothing to continue: not a header */
            d->hname_state = DATA_HEADER_VALUE;
        } else if (c > 32 && c < 127 && c != ':') {
            d->hname[0] = (char)c;
            d->hname_len = 1;
            d->hname_state = DATA_HEADER_NAME;
        } else {
            data_header_end(d);
        }
        break;
    case DATA_HEADER_NAME:
        if (c == ':') {
            data_header_field(d);
            d->hname_state = DATA_HEADER_VALUE;
        } else if (c == ' ' || c == '\t') {
            d->hname_state = DATA_HEADER_WSP;
        } else if (c > 32 && c < 127) {
            if (d->hname_len < sizeof(d->hname))
                d->hname[d->hname_len] = (char)c;
            if (d->hname_len <= sizeof(d->hname))
                d->hname_len++;
        } else {
            data_header_end(d);
        }
        break;
    case DATA_HEADER_WSP:
        if (c == ':') {
            data_header_field(d);
            d->hname_state = DATA_HEADER_VALUE;
        } else if (c != ' ' && c != '\t') {
            data_header_end(d); /* "From user@host ..." or prose: not a field */
        }
        break;
    case DATA_HEADER_VALUE:
        if (c == '\n')
            d->hname_state = DATA_HEADER_LINE_START;
        break;
    }
    d->at_line_start = d->hname_state == DATA_HEADER_LINE_START;
}

/* Account for n decoded bytes and store what the policy allows. A CRLF pair
 * (is_pair) is stored whole or not at all, so the output can never end in a
 * lone CR; a run of plain bytes is stored up to max_size exactly, so the
 * output does not depend on how the input was chunked. */
static void data_emit(struct smtp_data_decoder *d, struct smtp_buf *out, const uint8_t *p,
                      size_t n, bool is_pair)
{
    if (d->in_header) {
        for (size_t i = 0; i < n && d->in_header; i++)
            data_header_byte(d, p[i]);
    }
    uint64_t before = d->size;
    bool was_oversize = d->is_oversize; /* invariant: is_oversize == (size > max_size) */
    d->size = n > UINT64_MAX - before ? UINT64_MAX : before + n;
    if (d->size > d->max_size)
        d->is_oversize = true; /* 552 5.3.4 after the end of data */
    if (out == NULL || was_oversize || d->is_out_of_memory ||
        (d->reject_bare_lf && d->has_bare_lf))
        return;
    size_t store = n;
    if (d->is_oversize) /* here before <= max_size */
        store = is_pair ? 0 : (size_t)(d->max_size - before);
    if (store > 0 && smtp_buf_append(out, p, store) < 0)
        d->is_out_of_memory = true;
}

static const uint8_t data_crlf[2] = {'\r', '\n'};

/* A bare CR or LF: normalised to CRLF in the output; with reject_bare_lf
 * the flag alone stops all further storing (the caller answers 550 5.6.0). */
static void data_emit_bare(struct smtp_data_decoder *d, struct smtp_buf *out)
{
    d->has_bare_lf = true;
    data_emit(d, out, data_crlf, 2, true);
}

enum smtp_data_status smtp_data_feed(struct smtp_data_decoder *d, const uint8_t *in, size_t len,
                                     size_t *consumed, struct smtp_buf *out)
{
    size_t i = 0;
    if (d->state == DATA_STATE_DONE) {
        *consumed = 0;
        return SMTP_DATA_DONE;
    }
    while (i < len) {
        uint8_t c = in[i];
        switch (d->state) {
        case DATA_STATE_TEXT: {
            /* the hot path: copy the run of ordinary bytes at once */
            size_t run = 0;
            while (i + run < len && in[i + run] != '\r' && in[i + run] != '\n')
                run++;
            if (run > 0) {
                data_emit(d, out, in + i, run, false);
                i += run;
                continue;
            }
            i++;
            if (c == '\r')
                d->state = DATA_STATE_CR;
            else
                data_emit_bare(d, out); /* bare LF; still not a line start */
            break;
        }
        case DATA_STATE_LINE_START:
            i++;
            if (c == '.') {
                d->state = DATA_STATE_DOT; /* RFC 5321 §4.5.2: drop it */
            } else if (c == '\r') {
                d->state = DATA_STATE_CR;
            } else if (c == '\n') {
                data_emit_bare(d, out);
                d->state = DATA_STATE_TEXT;
            } else {
                data_emit(d, out, &c, 1, false);
                d->state = DATA_STATE_TEXT;
            }
            break;
        case DATA_STATE_CR:
            if (c == '\n') {
                i++;
                data_emit(d, out, data_crlf, 2, true);
                d->state = DATA_STATE_LINE_START;
            } else {
                /* the CR was bare; c is looked at again as ordinary text
                 * (another CR starts a new pending CR) */
                data_emit_bare(d, out);
                d->state = DATA_STATE_TEXT;
            }
            break;
        case DATA_STATE_DOT:
            if (c == '\r') {
                i++;
                d->state = DATA_STATE_DOT_CR;
            } else {
                /* the dot was stuffing; the byte is content (a '\n' here is
                 * a bare LF, handled by TEXT) */
                d->state = DATA_STATE_TEXT;
            }
            break;
        case DATA_STATE_DOT_CR:
            if (c == '\n') {
                *consumed = i + 1;
                d->state = DATA_STATE_DONE;
                return SMTP_DATA_DONE;
            }
            /* ".<CR>x": the stuffing dot then a bare CR; x is re-read */
            data_emit_bare(d, out);
            d->state = DATA_STATE_TEXT;
            break;
        default:
            /* DONE is handled above; any other value is a corrupted struct */
            *consumed = i;
            return SMTP_DATA_DONE;
        }
    }
    *consumed = len;
    return SMTP_DATA_MORE;
}
