/* smtp_reply.c — see smtp_reply.h. */
#include "relay/smtp_reply.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void smtp_reply_init(struct smtp_reply *r)
{
    memset(r, 0, sizeof(*r));
}

/* "x.y.z" with x in 2,4,5, y 0–999, z 0–999 (RFC 3463), at s; its length or 0. */
static size_t smtp_reply_enhanced_len(const char *s, size_t len)
{
    if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    size_t i = 2, digits = 0;
    while (i < len && isdigit((unsigned char)s[i]) && digits < 3) {
        i++;
        digits++;
    }
    if (digits == 0 || i >= len || s[i] != '.')
        return 0;
    i++;
    digits = 0;
    while (i < len && isdigit((unsigned char)s[i]) && digits < 3) {
        i++;
        digits++;
    }
    if (digits == 0 || (i < len && s[i] != ' '))
        return 0;
    return i;
}

static void smtp_reply_append(struct smtp_reply *r, const char *s, size_t len)
{
    size_t room = sizeof(r->text) - 1 - r->text_len;
    if (len > room)
        len = room;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        /* kept for logs and DSNs: no control bytes, nothing that could end a header */
        r->text[r->text_len++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    r->text[r->text_len] = '\0';
}

enum smtp_reply_feed smtp_reply_feed(struct smtp_reply *r, const char *line, size_t len)
{
    if (len < 3 || len > SMTP_REPLY_LINE_MAX || r->line_count >= SMTP_REPLY_LINES_MAX)
        return SMTP_REPLY_INVALID;
    for (int i = 0; i < 3; i++)
        if (!isdigit((unsigned char)line[i]))
            return SMTP_REPLY_INVALID;
    if (line[0] < '2' || line[0] > '5')
        return SMTP_REPLY_INVALID;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    bool is_last;
    if (len == 3 || line[3] == ' ')
        is_last = true;
    else if (line[3] == '-')
        is_last = false;
    else
        return SMTP_REPLY_INVALID;
    if (r->line_count > 0 && code != r->code)
        return SMTP_REPLY_INVALID;
    const char *rest = len > 4 ? line + 4 : "";
    size_t rest_len = len > 4 ? len - 4 : 0;
    if (r->line_count == 0) {
        r->code = code;
        size_t e = smtp_reply_enhanced_len(rest, rest_len);
        if (e > 0 && rest[0] == line[0] && e < sizeof(r->enhanced)) {
            memcpy(r->enhanced, rest, e);
            r->enhanced[e] = '\0';
        }
    } else if (r->text_len + 1 < sizeof(r->text)) {
        r->text[r->text_len++] = '\n'; /* lines joined by LF (the only control byte kept) */
        r->text[r->text_len] = '\0';
    }
    if (r->line_count > 0 && r->keyword_count < SMTP_REPLY_LINES_MAX) {
        size_t w = 0;
        char *kw = r->keywords[r->keyword_count];
        for (size_t i = 0; i < rest_len && w + 1 < sizeof(r->keywords[0]); i++) {
            unsigned char c = (unsigned char)rest[i];
            if (c < 0x20 || c > 0x7e)
                break;
            kw[w++] = (char)toupper(c);
        }
        kw[w] = '\0';
        if (w > 0)
            r->keyword_count++;
    }
    smtp_reply_append(r, line, len);
    r->line_count++;
    return is_last ? SMTP_REPLY_DONE : SMTP_REPLY_MORE;
}

/* Does keyword line kw start with word (followed by end or space/=)? */
static const char *smtp_ehlo_word(const char *kw, const char *word)
{
    size_t n = strlen(word);
    if (strncmp(kw, word, n) != 0 || (kw[n] != '\0' && kw[n] != ' ' && kw[n] != '='))
        return NULL;
    return kw + n;
}

void smtp_ehlo_parse(const struct smtp_reply *r, struct smtp_ehlo_caps *caps)
{
    memset(caps, 0, sizeof(*caps));
    if (r->code != 250)
        return;
    for (size_t i = 0; i < r->keyword_count; i++) {
        const char *kw = r->keywords[i];
        const char *rest;
        if (smtp_ehlo_word(kw, "PIPELINING"))
            caps->has_pipelining = true;
        else if (smtp_ehlo_word(kw, "STARTTLS"))
            caps->has_starttls = true;
        else if (smtp_ehlo_word(kw, "8BITMIME"))
            caps->has_8bitmime = true;
        else if ((rest = smtp_ehlo_word(kw, "SIZE")) != NULL) {
            caps->has_size = true;
            while (*rest == ' ')
                rest++;
            char *end = NULL;
            unsigned long long v = strtoull(rest, &end, 10);
            caps->size_max = end != rest && (*end == '\0' || *end == ' ') ? v : 0;
        } else if ((rest = smtp_ehlo_word(kw, "AUTH")) != NULL) {
            /* "AUTH PLAIN LOGIN" or the old "AUTH=LOGIN" */
            char words[64];
            snprintf(words, sizeof(words), " %s ", rest + (*rest == '=' ? 1 : 0));
            for (char *p = words; *p != '\0'; p++)
                if (*p == '=')
                    *p = ' ';
            if (strstr(words, " PLAIN ") != NULL)
                caps->has_auth_plain = true;
            if (strstr(words, " LOGIN ") != NULL)
                caps->has_auth_login = true;
        }
    }
}
