// A blinky for the iCEstick (iCE40 HX1K): a 24-bit counter on the 12 MHz
// clock drives the five LEDs, the top bits each at half the rate of the
// one before, about one blink a second on D1.
module top (
    input  wire clk,
    output wire [4:0] led
);
    reg [23:0] count = 0;
    always @(posedge clk) count <= count + 1;
    assign led = count[23:19];
endmodule
