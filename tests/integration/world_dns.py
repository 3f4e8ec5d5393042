"""world_dns.py — a real authoritative DNS server for the relay tests' zones.

UDP and TCP on one loopback port, answering from a Python structure:

    zones = {
        "pref.test": ["MX 10 mx1.pref.test.", "MX 20 mx2.pref.test."],
        "mx1.pref.test": ["A 127.9.9.2"],
        "servfail.test": SERVFAIL,        # every query answered SERVFAIL
        "refused.test": REFUSED,
        "silent.test": TIMEOUT,           # never answered
    }
    with DnsServer(zones) as dns:
        ... dns.port, dns.servers ("127.0.0.1:PORT") ...

A name in the zones with none of the asked type gets NOERROR with no answer (NODATA);
a name not in the zones gets NXDOMAIN. CNAME records are answered (and followed for
A/AAAA/MX within the zones, as a recursive resolver would). Needs python3-dnslib:
run with Debian's /usr/bin/python3.
"""

import socket
import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSError, DNSServer

SERVFAIL = "SERVFAIL"
REFUSED = "REFUSED"
TIMEOUT = "TIMEOUT"


class _Quiet:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _Resolver(BaseResolver):
    def __init__(self, zones):
        self.zones = {}
        self.lock = threading.Lock()
        self.queries = []
        for name, records in zones.items():
            key = name.lower().rstrip(".")
            if isinstance(records, str):
                self.zones[key] = records
                continue
            rrs = []
            for rec in records:
                rrs.extend(RR.fromZone(f"{key}. 60 IN {rec}"))
            self.zones[key] = rrs

    def resolve(self, request, handler):
        qname = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((qname, qtype))
        reply = request.reply()
        entry = self.zones.get(qname)
        if entry == TIMEOUT:
            raise DNSError("no answer on purpose")
        if entry == SERVFAIL:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if entry == REFUSED:
            reply.header.rcode = RCODE.REFUSED
            return reply
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        # follow CNAMEs inside our zones, answering the chain
        name, seen = qname, set()
        while name not in seen:
            seen.add(name)
            records = self.zones.get(name)
            if not isinstance(records, list):
                break
            answers = [rr for rr in records if QTYPE[rr.rtype] == qtype]
            if answers:
                for rr in answers:
                    reply.add_answer(rr)
                break
            cnames = [rr for rr in records if QTYPE[rr.rtype] == "CNAME"]
            if not cnames or qtype == "CNAME":
                break
            reply.add_answer(cnames[0])
            name = str(cnames[0].rdata.label).lower().rstrip(".")
        return reply


class DnsServer:
    def __init__(self, zones, host="127.0.0.1"):
        self.host = host
        self.resolver = _Resolver(zones)
        self.udp = self.tcp = None
        for _ in range(50):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind((host, 0))
            port = probe.getsockname()[1]
            probe.close()
            try:
                self.udp = DNSServer(self.resolver, address=host, port=port, logger=_Quiet())
                self.tcp = DNSServer(self.resolver, address=host, port=port, tcp=True,
                                     logger=_Quiet())
            except OSError:
                for s in (self.udp, self.tcp):
                    if s is not None:
                        s.server.server_close()
                self.udp = self.tcp = None
                continue
            self.port = port
            break
        else:
            raise RuntimeError("no free loopback port for the DNS server")
        self.udp.start_thread()
        self.tcp.start_thread()
        self._wait_ready()

    @property
    def servers(self):
        return f"{self.host}:{self.port}"

    def _wait_ready(self):
        """A query answered over UDP: the server threads are serving."""
        q = DNSRecord.question("ready.invalid", "A")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        try:
            for _ in range(60):
                try:
                    s.sendto(q.pack(), (self.host, self.port))
                    s.recvfrom(4096)
                    return
                except socket.timeout:
                    continue
            raise RuntimeError("the test DNS server does not answer")
        finally:
            s.close()

    def queried(self, name, qtype=None):
        name = name.lower().rstrip(".")
        with self.resolver.lock:
            return [q for q in self.resolver.queries
                    if q[0] == name and (qtype is None or q[1] == qtype)]

    def close(self):
        for s in (self.udp, self.tcp):
            if s is not None:
                s.stop()
                s.server.server_close()
        self.udp = self.tcp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
