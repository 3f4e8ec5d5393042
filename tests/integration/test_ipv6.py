"""IPv6: one listener bound to both 127.0.0.1 and [::1] on the same port. A client over
::1 gets STARTTLS, AUTH and a queued message; the Received header and the log line name
the client's IPv6 address in RFC 5321 form (IPv6:...)."""

import re
import socket

import harness
from harness import SmarthostCase, make_message


def ipv6_loopback_available():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


class IPv6Listener(SmarthostCase):
    def test_submit_over_ipv6(self):
        if not ipv6_loopback_available():
            self.skipTest("no IPv6 loopback in this environment")
        port, sock = harness.reserve_port()
        try:
            sh = self.start_smarthost(listeners={
                "submission": {"address": f"127.0.0.1:{port},[::1]:{port}",
                               "mode": "starttls"}})
        finally:
            sock.close()
        c = harness.Client(port, host="::1", context=sh.client_context())
        c.expect(c.greeting, 220)
        c.login("alice", sh.users["alice"])
        qid = c.submit("alice@example.test", ["v6@example.test"], make_message("over ipv6"))
        c.quit()
        received = sh.message(qid).headers()[0]
        self.assertEqual(received[0], "Received")
        self.assertRegex(received[1], r"\(\[IPv6:::1\]\)")
        sh.wait_log(rf"{re.escape(qid)}.*::1")

        # The IPv4 side of the same listener still answers.
        c4 = sh.connect()
        c4.expect(c4.greeting, 220)
        c4.quit()


if __name__ == "__main__":
    harness.main()
