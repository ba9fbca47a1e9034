// Simple dual-port RAM (one write port, one registered read port, read-before-write), the
// block RAM hwflow's generated engines instantiate for their requantization parameter memory.
// Hand-written because Amaranth 0.5 spends seconds per Mbit emitting a memory's initial
// contents; this module has none (the driver loads the memory before use). The Amaranth
// simulator path of hwflow.hw.engine uses amaranth.lib.memory.Memory with the same behaviour
// (a synchronous, non-transparent read port), and the Verilator benches check this one.
module hwflow_sdp_ram #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 2,
    parameter int AW = 1
) (
    input  wire             clk,
    input  wire             we,
    input  wire [AW-1:0]    waddr,
    input  wire [WIDTH-1:0] wdata,
    input  wire [AW-1:0]    raddr,
    output reg  [WIDTH-1:0] rdata
);
  reg [WIDTH-1:0] mem[DEPTH];
  always @(posedge clk) begin
    if (we) mem[waddr] <= wdata;
    rdata <= mem[raddr];
  end
endmodule
