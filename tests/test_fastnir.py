"""hwflow.hw.fastnir: the netlist bookkeeping it replaces gives the same Verilog, and an
expression used in several places is built once."""

from __future__ import annotations

from amaranth.back import verilog
from amaranth.hdl import Array, Cat, Module, Mux
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwflow.hw.fastnir import fast_nir


class _Mixed(wiring.Component):
    """Every kind of cell the machine uses, each expression used once."""

    def __init__(self) -> None:
        super().__init__(
            {
                "a": In(96),
                "b": In(96),
                "sel": In(3),
                "off": In(4),
                "o_sum": Out(97),
                "o_shift": Out(96),
                "o_part": Out(8),
                "o_arr": Out(96),
                "o_mux": Out(96),
                "o_reg": Out(96),
                "o_mem": Out(16),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.mem = mem = Memory(shape=16, depth=8, init=[3, 1, 4])
        rd = mem.read_port(domain="comb")
        m.d.comb += [
            rd.addr.eq(self.sel),
            self.o_mem.eq(rd.data),
            self.o_sum.eq(self.a + self.b),
            self.o_shift.eq((Cat(self.a, self.b) >> (self.off * 8))[:96]),
            self.o_part.eq(self.a.bit_select(self.off, 8)),
            self.o_arr.eq(Array([self.a, self.b, ~self.a])[self.sel]),
            self.o_mux.eq(Mux(self.sel[0], self.a ^ self.b, self.a & self.b)),
        ]
        with m.FSM():
            with m.State("A"):
                m.d.sync += self.o_reg.eq(self.a)
                with m.If(self.sel == 2):
                    m.next = "B"
            with m.State("B"):
                m.d.sync += self.o_reg.eq(self.o_reg - self.b)
                m.next = "A"
        return m


class _Shared(wiring.Component):
    """One shift whose result three outputs slice."""

    def __init__(self) -> None:
        super().__init__({"a": In(64), "off": In(3), "o": Out(16).array(3)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        shifted = Cat(self.a, self.a) << (self.off * 8)
        for i, o in enumerate(self.o):
            m.d.comb += o.eq(shifted[16 * i : 16 * (i + 1)])
        return m


def test_same_verilog_as_amaranth():
    plain = verilog.convert(_Mixed(), name="t")
    with fast_nir():
        fast = verilog.convert(_Mixed(), name="t")
    assert fast == plain
    assert "<<" not in plain and ">>" in plain  # the design was really converted


def test_shared_expression_built_once():
    plain = verilog.convert(_Shared(), name="t")
    with fast_nir():
        fast = verilog.convert(_Shared(), name="t")
    assert plain.count(" << ") == 3  # Amaranth copies it per use
    assert fast.count(" << ") == 1
    again = verilog.convert(_Shared(), name="t")  # the patches are gone after the block
    assert again == plain


def test_no_patch_on_an_unchecked_amaranth(monkeypatch) -> None:
    import amaranth
    from amaranth.hdl import _nir

    plain = _nir.Value.__dict__["__new__"]
    monkeypatch.setattr(amaranth, "__version__", "0.6.0")
    with fast_nir():
        assert _nir.Value.__dict__["__new__"] is plain
    monkeypatch.setattr(amaranth, "__version__", "0.5.10")
    with fast_nir():
        assert _nir.Value.__dict__["__new__"] is not plain
    assert _nir.Value.__dict__["__new__"] is plain
